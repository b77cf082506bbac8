"""Dynamic batching: requests queue, a batcher forms batches, the backend runs them, results split.

When no batch is running, what is queued runs at once (``eager``: an idle model adds no latency;
off, every batch waits as Triton's dynamic batcher does). While one runs, the next batch closes
when it holds ``max_batch`` rows or its first request has waited ``max_delay_s``, whichever comes
first; up to ``concurrency`` batches run at once (the backend runs each off the event loop, so gRPC
I/O never waits on a batch). The queue is bounded in rows: a request that does not fit is refused
with RESOURCE_EXHAUSTED at once rather than waiting behind work it cannot finish in time. A
request whose deadline has passed when its batch forms is dropped, not run. Statistics follow
Triton's ModelStatistics: counts in requests and rows, durations in nanoseconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from loopline_core.errors import ErrorKind, LooplineError

Run = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class Stats:
    """Cumulative statistics of one served version, in Triton's terms."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    """Rows inferred (each row of a batched request counts)."""
    execution_count: int = 0
    """Batches run: fewer than requests when requests share batches."""
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)
    """Batch size (rows) -> how many batches of that size ran and their compute time."""


@dataclass(eq=False)
class _Pending:
    x: np.ndarray
    deadline: float | None
    queued_at: int
    future: asyncio.Future[np.ndarray]


class Batcher:
    def __init__(self, run: Run, *, max_batch: int, max_delay_s: float, max_queue: int, concurrency: int = 1,
                 stats: Stats | None = None, eager: bool = True) -> None:
        if max_batch < 1 or max_queue < 1 or concurrency < 1 or max_delay_s < 0:
            raise ValueError("max_batch, max_queue and concurrency must be >= 1 and max_delay_s >= 0")
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.eager = eager
        self.stats = stats or Stats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._form_batches())

    async def close(self) -> None:
        """Stop forming batches; batches already running finish; what is still queued is refused."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(LooplineError(ErrorKind.UNAVAILABLE, "the model was unloaded"))
        self._queued_rows = 0

    async def submit(self, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Scores for ``x`` (rows in, one score per row out). ``deadline`` is on ``time.monotonic``."""
        rows = len(x)
        if self._queued_rows + rows > self.max_queue:
            self.stats.fail.add(0)
            raise LooplineError(ErrorKind.RESOURCE_EXHAUSTED,
                                f"the queue is full ({self._queued_rows} of {self.max_queue} rows waiting)")
        if self._worker is None:
            self.start()
        started = time.perf_counter_ns()
        p = _Pending(x, deadline, started, asyncio.get_running_loop().create_future())
        self._queue.append(p)
        self._queued_rows += rows
        self._arrived.set()
        try:
            out = await p.future
        except LooplineError:
            self.stats.fail.add(time.perf_counter_ns() - started)
            raise
        self.stats.success.add(time.perf_counter_ns() - started)
        return out

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            first = self._queue[0]
            close_at = loop.time() + self.max_delay_s - (time.perf_counter_ns() - first.queued_at) / 1e9
            # Wait for company only while a batch is running: an idle model scores a lone request at
            # once (no added latency at low load), and under load requests gather while it is busy.
            while (self._running or not self.eager) and self._queued_rows < self.max_batch and loop.time() < close_at:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, close_at - loop.time()))
            await self._slots.acquire()  # wait for a free runner before taking rows out of the queue
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            # Then wake the batcher: a batch gathering while this one ran goes as soon as the model is
            # idle (eager), not when its delay ends. Callbacks run in order: the discard comes first.
            task.add_done_callback(lambda _t: self._arrived.set())

    def _take(self) -> list[_Pending]:
        """Up to ``max_batch`` rows from the head of the queue (a larger request goes alone); requests
        whose deadline has passed, or whose caller has gone, are dropped here, never run."""
        now = time.monotonic()
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            p = self._queue[0]
            if p.future.done() or (p.deadline is not None and p.deadline <= now):
                self._queue.popleft()
                self._queued_rows -= len(p.x)
                if not p.future.done():
                    p.future.set_exception(LooplineError(
                        ErrorKind.DEADLINE_EXCEEDED, "the deadline passed while the request was queued"))
                continue
            if batch and rows + len(p.x) > self.max_batch:
                break
            self._queue.popleft()
            self._queued_rows -= len(p.x)
            batch.append(p)
            rows += len(p.x)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            began = time.perf_counter_ns()
            for p in batch:
                self.stats.queue.add(began - p.queued_at)
            x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
            try:
                scores = _checked(np.asarray(await self._run(x)).reshape(-1), len(x))
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the failure, the server lives
                err = exc if isinstance(exc, LooplineError) else LooplineError(
                    ErrorKind.INTERNAL, f"the model failed: {type(exc).__name__}: {exc}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                return
            took = time.perf_counter_ns() - began
            self.stats.compute_infer.add(took, len(batch))
            self.stats.execution_count += 1
            self.stats.inference_count += len(x)
            self.stats.last_inference_ms = int(time.time() * 1000)
            self.stats.batches.setdefault(len(x), Duration()).add(took)
            at = 0
            for p in batch:
                n = len(p.x)
                if not p.future.done():
                    p.future.set_result(scores[at:at + n])
                at += n
        finally:
            self._slots.release()


def _checked(scores: np.ndarray, rows: int) -> np.ndarray:
    if len(scores) != rows:
        raise LooplineError(ErrorKind.INTERNAL, f"the backend returned {len(scores)} scores for {rows} rows")
    return scores
