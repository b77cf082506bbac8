"""The prediction log: every row served goes to ``loopline.predictions.<model>``, off the response path.

A bounded queue sits between the handlers and one background sender. The handler only puts a
row's data in the queue; the sender builds the ``PredictionLogged`` messages and publishes them in
batches: one produce batch per topic and partition, acknowledged once (per-row sends cost the
event loop more than scoring the rows).

When the queue is full (the broker is slow or down), ``when_full`` decides:

* ``drop`` (the default): the row is not logged, and counted in
  ``loopline_inference_prediction_log_dropped_total{reason="full"}``. Serving never waits on
  the log: the log feeds drift statistics, which a sample serves as well, while a broker outage
  must not become an inference outage.
* ``block``: the handler waits up to ``block_s`` for room (back-pressure: callers slow down to
  the log's pace), then drops what still does not fit (``reason="timeout"``).

Records are keyed by the row's entity id, else the request id, so a model's predictions spread
over the topic's partitions (a key per model put them all on one). A failed publish is retried
a few times with a back-off, then the rows are counted in ``..._failed_total`` and logged. On
shutdown :meth:`PredictionLog.close` publishes everything still queued before the publisher stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline_core.events import metadata
from loopline_core.kafka import TopicNamer

from loopline_inference.metrics import LOG_DROPPED, LOG_FAILED, LOG_QUEUED, LOG_SENT

log = logging.getLogger(__name__)

MESSAGE_TYPE = "loopline.inference.v1.PredictionLogged"
WhenFull = Literal["drop", "block"]


@dataclass(frozen=True, slots=True)
class Row:
    """One served row, as the handler hands it over (messages are built by the sender)."""

    model: str
    version: int
    request_id: str
    event_id: str
    feature_names: list[str]
    inputs: np.ndarray
    outputs: np.ndarray
    latency_ms: float
    entity_id: str
    served_at: float
    """Epoch seconds when it was served (the event's time, not the time it was published)."""
    role: str = "champion"
    variant: str = "torch"
    shadow: bool = False
    error: str = ""
    traceparent: str = ""
    """The serving call's trace context: the row's record continues that trace (the monitor links it)."""

    def message(self) -> PredictionLogged:
        return PredictionLogged(metadata=metadata("inference", self.event_id, occurred_at=self.served_at),
                                model_name=self.model,
                                model_version=self.version, request_id=self.request_id,
                                feature_names=self.feature_names, inputs=self.inputs.tolist(),
                                outputs=self.outputs.tolist(), latency_ms=self.latency_ms, entity_id=self.entity_id,
                                role=self.role, variant=self.variant, shadow=self.shadow, error=self.error)

    @property
    def key(self) -> str:
        return self.entity_id or self.request_id


_STOP = object()


class Publishes(Protocol):
    """What the log needs of :class:`loopline_core.kafka.Publisher`."""

    async def publish_traced(self, topic: str, records: Sequence[tuple[str | bytes | None, bytes, str]], *,
                             message_type: str | None = ...) -> None: ...


class PredictionLog:
    """A bounded queue of served rows and the one task that publishes them."""

    def __init__(self, publisher: Publishes, namer: TopicNamer, *, capacity: int = 10_000,
                 when_full: WhenFull = "drop", block_s: float = 0.05, batch_size: int = 500,
                 linger_s: float = 0.0, retries: int = 3, retry_backoff_s: float = 0.2,
                 drain_s: float = 10.0) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be at least 1")
        self.publisher = publisher
        self.namer = namer
        self.when_full = when_full
        self.block_s = block_s
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.drain_s = drain_s
        self._queue: asyncio.Queue[Row | object] = asyncio.Queue(maxsize=capacity)
        self._closing = False
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._run(), name="prediction-log")

    async def record(self, rows: list[Row]) -> None:
        """Queue ``rows`` for the log; what does not fit is dropped (``drop``) or waited for (``block``)."""
        if not rows:
            return
        model = rows[0].model
        if self._closing:
            LOG_DROPPED.labels(model, "closed").inc(len(rows))
            return
        queued = 0
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except asyncio.QueueFull:
                break
            queued += 1
        if queued < len(rows) and self.when_full == "block":
            deadline = time.monotonic() + self.block_s
            with contextlib.suppress(TimeoutError):
                for row in rows[queued:]:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                        await self._queue.put(row)
                    queued += 1
        LOG_QUEUED.set(self._queue.qsize())
        if queued < len(rows):
            LOG_DROPPED.labels(model, "full" if self.when_full == "drop" else "timeout").inc(len(rows) - queued)

    async def close(self) -> None:
        """Take no more rows; publish the queued ones (within ``drain_s``), then stop the sender."""
        self._closing = True
        if self._sender is None:
            return
        try:
            async with asyncio.timeout(self.drain_s):
                await self._queue.put(_STOP)  # behind every queued row; the sender makes room if full
                await self._sender
        except TimeoutError:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            left = [r for r in self._drain_nowait() if isinstance(r, Row)]
            for row in left:
                LOG_DROPPED.labels(row.model, "shutdown").inc()
            log.error("prediction log not drained in time: rows lost",  # noqa: TRY400 - a verdict, not a crash
                      extra={"left": len(left), "drain_s": self.drain_s})
        self._sender = None

    def _drain_nowait(self) -> list[Row | object]:
        out: list[Row | object] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[Row] = []
            item = await self._queue.get()
            deadline = time.monotonic() + self.linger_s
            while True:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, Row)
                batch.append(item)
                if len(batch) >= self.batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            item = await self._queue.get()
                    except TimeoutError:
                        break
            LOG_QUEUED.set(self._queue.qsize())
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[Row]) -> None:
        """Publish ``batch``: one produce batch per topic and partition (a record per row, keyed as
        before), retried as a whole, then given up on. Per-row sends cost the event loop more CPU than
        scoring the rows does; batched, the log no longer competes with serving."""
        by_topic: dict[str, list[Row]] = {}
        for row in batch:
            by_topic.setdefault(self.namer.predictions(row.model), []).append(row)
        for topic, rows in by_topic.items():
            await self._send_topic(topic, rows)

    async def _send_topic(self, topic: str, rows: list[Row]) -> None:
        records = [(row.key, row.message().SerializeToString(), row.traceparent) for row in rows]
        for attempt in range(self.retries + 1):
            try:
                await self.publisher.publish_traced(topic, records, message_type=MESSAGE_TYPE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker's failure: retried, then counted
                if attempt < self.retries:
                    log.warning("prediction log publish failed; retrying", extra={
                        "rows": len(rows), "attempt": attempt + 1, "error": repr(exc)})
                    await asyncio.sleep(self.retry_backoff_s * 2 ** attempt)
                    continue
                for row in rows:
                    LOG_FAILED.labels(row.model).inc()
                log.error("prediction log rows not published after retries",  # noqa: TRY400 - a verdict
                          extra={"rows": len(rows), "error": repr(exc)})
                return
            for row in rows:
                LOG_SENT.labels(row.model).inc()
            return
