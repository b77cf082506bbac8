"""The delivery contract of one subscription: decode, handle a batch, dead-letter, retry, commit.

FastStream's batch subscriber fetches (``max_records`` per batch, ``linger`` to fill one) and runs
its middlewares (traces, metrics); the subscriber runs with ``AckPolicy.MANUAL`` and this class is
its handler, so the at-least-once rules are stated once, here:

* Each record is decoded alone. A record that does not decode goes to the dead-letter topic.
* The decoded batch goes to the service's handler at once (one dedupe query, one sink write, one
  publish flush). If the handler raises a *permanent* error the batch is split and each record
  retried alone, so only the record at fault is dead-lettered and the rest flow on.
* A *transient* error pauses only the partitions of the batch, seeks them back and resumes them
  after an exponential back-off with jitter. Once a record has failed for longer than the retry
  budget (time or attempts), it is retried alone one last time and then dead-lettered as
  ``exhausted``: no record holds its partition longer than the budget.
* Dead letters are published (and that publish retried until it succeeds) before the offsets of
  the batch are committed, once per batch, per partition.
* On revocation the listener waits for the batch in hand, which commits what it finished; records
  of partitions this member no longer owns are dropped, never handled or committed.
* The subscription is ready only once its consumer has joined its group and received an assignment
  (possibly empty: a replica beyond the partition count is a ready standby), and not again until the
  next assignment after a revocation; and not while transient failures keep coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from loopline_core import metrics
from loopline_core.errors import ErrorKind, LooplineError, is_permanent
from loopline_core.kafka.publisher import Publisher
from loopline_core.kafka.records import (
    CONTENT_TYPE,
    DLQ_ATTEMPTS,
    DLQ_DETAIL,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SOURCE,
    EXHAUSTED,
    MESSAGE_TYPE,
    Record,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_REASONS = frozenset({*(k.value for k in ErrorKind), EXHAUSTED})
"""The dead-letter kinds, the bounded set the ``reason`` label of the dead-letter counter takes."""


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    """A decoded record in a batch."""

    record: Record
    value: T


Decoder = Callable[[Record], T]
BatchHandler = Callable[[list[Item[T]]], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How long a transient failure may hold a partition, and how fast to try again."""

    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    budget_s: float = 60.0
    """A record failing transiently for longer than this is dead-lettered as exhausted."""
    max_attempts: int = 20
    not_ready_after: int = 3
    """Consecutive transient failures after which the service reports itself not ready."""
    rebalance_wait_s: float = 20.0
    """How long a revocation waits for the batch in hand to finish and commit."""
    handler_timeout_s: float = 240.0
    """A handler call that takes longer is cancelled and counts as a transient failure, so a call
    that hangs cannot hold its partitions for ever. Below the consumer's 5-minute poll interval,
    after which the group would evict the member anyway."""

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with "equal jitter": half fixed, half random, so replicas spread out."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** max(attempt - 1, 0))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not cryptography


@dataclass
class _Retry:
    offset: int
    since: float
    attempts: int = 0


@dataclass
class _Dead:
    record: Record
    reason: str
    kind: str
    details: dict[str, str] = field(default_factory=dict)
    attempts: int = 1


@dataclass
class _Outcome:
    done: dict[TopicPartition, int] = field(default_factory=dict)
    """Per partition, the offset after the last record finished (handled or dead-lettered)."""
    dead: list[_Dead] = field(default_factory=list)
    retry: dict[TopicPartition, tuple[int, BaseException]] = field(default_factory=dict)
    """Per partition, the first record to handle again and the error that stopped it."""


class PartialFailure(Exception):  # noqa: N818 - it is a signal between a handler and the delivery layer
    """Raised by a handler that works record by record: the first ``done`` records finished, the
    next one failed with ``cause``."""

    def __init__(self, done: int, cause: BaseException) -> None:
        super().__init__(f"record {done} of the batch failed: {cause!r}")
        self.done = done
        self.cause = cause


def _dead_of(record: Record, exc: BaseException, *, kind: str | None = None, attempts: int = 1) -> _Dead:
    if isinstance(exc, LooplineError):
        return _Dead(record, exc.message, kind or exc.kind.value, dict(exc.details), attempts)
    reason = f"{type(exc).__name__}: {exc}"[:500]
    return _Dead(record, reason, kind or "INVALID_ARGUMENT", {}, attempts)


class Delivery(Generic[T]):
    """Handles the batches of one FastStream batch subscriber (see the module docstring)."""

    def __init__(self, name: str, decode: Decoder[T], handle: BatchHandler[T], publisher: Publisher,
                 dead_letter_for: Callable[[str], str], policy: RetryPolicy) -> None:
        self.name = name
        self.decode = decode
        self.handle = handle
        self.publisher = publisher
        self.dead_letter_for = dead_letter_for
        self.policy = policy
        self.subscriber: Any = None  # FastStream's subscriber; its AIOKafkaConsumer exists once started
        self.listener = _Listener(self)
        self.failures = 0
        """Consecutive transient failures; the service is not ready while this is high."""
        self.assigned = False
        """The consumer has joined its group and received an assignment since the last revocation."""
        metrics.BUS_ASSIGNED.labels(name).set(0)
        self._busy = asyncio.Lock()
        self._draining = False
        self._revoked: set[TopicPartition] = set()
        self._retry: dict[TopicPartition, _Retry] = {}
        self._resume: dict[TopicPartition, asyncio.TimerHandle] = {}

    @property
    def consumer(self) -> Any:
        return self.subscriber.consumer

    @property
    def group(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def ready(self) -> bool:
        return self.assigned and self.failures < self.policy.not_ready_after

    async def lag(self, timeout_s: float = 2.0) -> dict[TopicPartition, int]:
        """Per assigned partition, the records not yet consumed: the high watermark the last fetch
        reported minus the consumer's position (partitions not fetched yet are left out)."""
        out: dict[TopicPartition, int] = {}
        if self.subscriber is None or not self.assigned:
            return out
        try:
            consumer = self.consumer
            owned = sorted(self._owned(), key=lambda t: (t.topic, t.partition))
            for tp in owned:
                high = consumer.highwater(tp)
                if high is None:
                    continue
                async with asyncio.timeout(timeout_s):
                    position = await consumer.position(tp)
                out[tp] = max(int(high) - int(position), 0)
        except (IllegalStateError, AssertionError, AttributeError, KafkaError, TimeoutError):
            return out  # a rebalance or an outage in progress: report what was measured
        return out

    async def drain(self) -> None:
        """Finish the batch in hand (it commits) and take no more."""
        self._draining = True
        async with self._busy:
            pass

    async def on_batch(self, raw: Sequence[Any]) -> None:
        """FastStream's handler: never raises, so nothing escapes into the consumer loop."""
        if self._draining or not raw:
            return
        async with self._busy:
            try:
                await self._run(raw)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not be silent: the batch is not committed, so it is redelivered.
                log.exception("batch failed in the delivery layer", extra={"subscription": self.name})
                self._rewind({Record.of(r).tp: r.offset for r in reversed(raw)}, self.policy.max_backoff_s)

    async def _run(self, raw: Sequence[Any]) -> None:
        owned = self._owned()
        records = [r for r in map(Record.of, raw) if r.tp in owned]
        started = time.perf_counter()
        outcome = _Outcome()
        items: list[Item[T]] = []
        for record in records:
            try:
                items.append(Item(record, self.decode(record)))
            except Exception as exc:  # noqa: BLE001 - whatever a record's bytes make decoding raise is its fault
                outcome.dead.append(_dead_of(record, exc))
        await self._handle(items, outcome, isolate=False)
        # Records behind a partition's retry point are redelivered: dead-letter and commit only before it.
        outcome.dead = [d for d in outcome.dead if d.record.tp not in outcome.retry
                        or d.record.offset < outcome.retry[d.record.tp][0]]
        for d in outcome.dead:
            tp = d.record.tp
            outcome.done[tp] = max(outcome.done.get(tp, 0), d.record.offset + 1)
        for tp, (offset, cause) in outcome.retry.items():
            self._schedule_retry(tp, offset, cause)
        if outcome.retry:
            self.failures += 1  # once per failed batch, however many partitions it spans
        if outcome.dead:
            await self._dead_letter(outcome.dead)
        self._note(records, outcome, time.perf_counter() - started)
        await self._commit(outcome)

    async def _handle(self, items: list[Item[T]], out: _Outcome, *, isolate: bool) -> None:
        items = [i for i in items if i.record.tp not in out.retry]
        if not items:
            return
        deadline = asyncio.timeout(self.policy.handler_timeout_s)
        try:
            async with deadline:
                await self.handle(items)
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            cause = LooplineError(ErrorKind.UNAVAILABLE, f"handler ran longer than {self.policy.handler_timeout_s}s") \
                if deadline.expired() else exc
            await self._fail(items, cause, out, isolate=isolate)
        except PartialFailure as pf:
            # A per-record handler got this far: keep what it did, judge the record that failed alone.
            self._finish(items[:pf.done], out)
            await self._fail(items[pf.done:pf.done + 1], pf.cause, out, isolate=True)
            await self._handle(items[pf.done + 1:], out, isolate=isolate)
        except Exception as exc:  # noqa: BLE001 - classified in _fail; nothing is swallowed
            await self._fail(items, exc, out, isolate=isolate)
        else:
            self._finish(items, out)

    async def _fail(self, items: list[Item[T]], exc: BaseException, out: _Outcome, *, isolate: bool) -> None:
        if is_permanent(exc):
            if len(items) == 1:
                out.dead.append(_dead_of(items[0].record, exc))
                self._finish(items, out)
                return
            for item in items:  # find the record at fault: the others go on
                await self._handle([item], out, isolate=True)
            return
        spent = {tp for tp in {i.record.tp for i in items} if self._spent(tp, items)}
        if len(items) == 1 and spent:
            state = self._retry.get(items[0].record.tp)
            out.dead.append(_dead_of(items[0].record, exc, kind=EXHAUSTED,
                                     attempts=(state.attempts if state else 0) + 1))
            self._finish(items, out)
            metrics.BUS_EXHAUSTED.labels(items[0].record.topic).inc()
            return
        for item in items:
            tp = item.record.tp
            if tp not in spent and tp not in out.retry:
                out.retry[tp] = (item.record.offset, exc)
        for item in items:  # a spent budget gets one last pass, record by record, before the dead letters
            if item.record.tp in spent:
                await self._handle([item], out, isolate=True)

    def _spent(self, tp: TopicPartition, items: list[Item[T]]) -> bool:
        first = next(i.record.offset for i in items if i.record.tp == tp)
        state = self._retry.get(tp)
        if state is None or state.offset != first:
            return False
        return (time.monotonic() - state.since >= self.policy.budget_s
                or state.attempts >= self.policy.max_attempts)

    def _finish(self, items: list[Item[T]], out: _Outcome) -> None:
        last: dict[TopicPartition, int] = {}
        for item in items:  # records of a partition come in offset order
            last[item.record.tp] = item.record.offset
        for tp, offset in last.items():
            out.done[tp] = max(out.done.get(tp, 0), offset + 1)
            state = self._retry.get(tp)
            if state is not None and offset >= state.offset:
                del self._retry[tp]

    def _schedule_retry(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        state = self._retry.get(tp)
        if state is None or state.offset != offset:
            state = self._retry[tp] = _Retry(offset, time.monotonic())
        state.attempts += 1
        delay = self.policy.backoff(state.attempts)
        log.warning("transient failure: partition paused, will retry", extra={
            "subscription": self.name, "topic": tp.topic, "partition": tp.partition, "offset": offset,
            "attempt": state.attempts, "backoff_s": round(delay, 3), "error": f"{type(exc).__name__}: {exc}"[:300]})
        metrics.BUS_CONSUMED.labels(tp.topic, "retry").inc()
        self._rewind({tp: offset}, delay)

    def _rewind(self, offsets: dict[TopicPartition, int], delay: float) -> None:
        """Seek back and pause, then resume after the back-off: only these partitions wait."""
        loop = asyncio.get_running_loop()
        for tp, offset in offsets.items():
            with contextlib.suppress(IllegalStateError, AssertionError, KafkaError):
                self.consumer.seek(tp, offset)
                self.consumer.pause(tp)
                old = self._resume.pop(tp, None)
                if old is not None:
                    old.cancel()
                self._resume[tp] = loop.call_later(delay, self._resume_tp, tp)

    def _resume_tp(self, tp: TopicPartition) -> None:
        self._resume.pop(tp, None)
        with contextlib.suppress(IllegalStateError, AssertionError, KafkaError):
            if tp in self._owned():
                self.consumer.resume(tp)

    def _owned(self) -> set[TopicPartition]:
        try:
            assigned = set(self.consumer.assignment())
        except (IllegalStateError, AssertionError, AttributeError):
            return set()
        return assigned - self._revoked

    async def _dead_letter(self, dead: list[_Dead]) -> None:
        """Publish every dead letter; a failed publish is retried (never skipped) until it lands."""
        attempt = 0
        while True:
            try:
                futures = [await self._dead_letter_one(d) for d in dead]
                await asyncio.gather(*futures)
                break
            except Exception as exc:
                attempt += 1
                self.failures += 1
                delay = self.policy.backoff(attempt)
                log.warning("dead-letter publish failed, retrying", extra={
                    "subscription": self.name, "attempt": attempt, "error": repr(exc)[:300]})
                if self._draining:
                    raise
                await asyncio.sleep(delay)
        for d in dead:
            metrics.BUS_DEAD_LETTERED.labels(d.record.topic, d.kind if d.kind in _REASONS else "other").inc()
            metrics.BUS_CONSUMED.labels(d.record.topic, "dead_lettered").inc()
            log.info("dead-lettered", extra={"source": d.record.source, "reason": d.reason[:200], "kind": d.kind})

    async def _dead_letter_one(self, d: _Dead) -> asyncio.Future[Any]:
        r = d.record
        headers: list[tuple[str, bytes | str]] = [
            (k, v) for k, v in r.headers if not k.startswith(DLQ_DETAIL) and k not in (CONTENT_TYPE, MESSAGE_TYPE)]
        headers += [(DLQ_REASON, d.reason[:1000]), (DLQ_KIND, d.kind), (DLQ_SOURCE, r.source),
                    (DLQ_ATTEMPTS, str(d.attempts))]
        headers += [(f"{DLQ_DETAIL}{k}", v[:200]) for k, v in d.details.items()]
        return await self.publisher.publish_nowait(
            self.dead_letter_for(r.topic), r.value, key=r.key, headers=headers,
            content_type=r.header(CONTENT_TYPE) or "application/octet-stream", message_type=r.header(MESSAGE_TYPE))

    def _note(self, records: list[Record], out: _Outcome, seconds: float) -> None:
        if not out.retry:
            self.failures = 0
        ok = len(records) - len(out.dead) - sum(1 for r in records if r.tp in out.retry)
        if records:
            metrics.BUS_CONSUMED.labels(records[0].topic, "ok").inc(max(ok, 0))
            metrics.BUS_BATCH_SECONDS.labels(records[0].topic).observe(seconds)

    async def _commit(self, out: _Outcome) -> None:
        owned = self._owned()
        offsets = {tp: min(off, out.retry[tp][0]) if tp in out.retry else off
                   for tp, off in out.done.items() if tp in owned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member: it resumes from the last commit and the
            # idempotent sinks absorb the repeat.
            log.info("commit lost to a rebalance", extra={"subscription": self.name, "error": str(exc)})
        except KafkaError as exc:
            log.warning("commit failed; the batch will be redelivered", extra={"subscription": self.name,
                                                                                "error": repr(exc)})

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Let the batch in hand finish and commit; then forget the revoked partitions' retries."""
        try:
            async with asyncio.timeout(self.policy.rebalance_wait_s):
                async with self._busy:
                    pass
        except TimeoutError:
            log.warning("batch still running at revocation; its revoked records will not be committed",
                        extra={"subscription": self.name})
        self._revoked |= revoked
        self._forget(revoked)
        self._set_assigned(False)

    def assign(self, assigned: set[TopicPartition]) -> None:
        self._revoked -= assigned
        self._forget(assigned)
        self._set_assigned(True)

    def _set_assigned(self, value: bool) -> None:
        self.assigned = value
        metrics.BUS_ASSIGNED.labels(self.name).set(1 if value else 0)

    def _forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._retry.pop(tp, None)
            handle = self._resume.pop(tp, None)
            if handle is not None:
                handle.cancel()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, delivery: Delivery[Any]) -> None:
        self.delivery = delivery

    async def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked", extra={"subscription": self.delivery.name,
                                              "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)})
        await self.delivery.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", extra={"subscription": self.delivery.name,
                                               "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)})
        self.delivery.assign(set(assigned))


def each(handler: Callable[[T, Record], Awaitable[None]]) -> BatchHandler[T]:
    """A batch handler that handles the records one by one, in order, each in a span of its own
    continuing its producer's trace (for services whose work is per event, not a hot path)."""
    from opentelemetry import trace  # noqa: PLC0415

    from loopline_core.telemetry import extract_headers  # noqa: PLC0415

    tracer = trace.get_tracer("loopline.kafka")

    async def handle(items: list[Item[T]]) -> None:
        for n, item in enumerate(items):
            r = item.record
            with tracer.start_as_current_span(f"{r.topic} process", context=extract_headers(r.headers),
                                              kind=trace.SpanKind.CONSUMER,
                                              attributes={"messaging.destination.name": r.topic,
                                                          "messaging.kafka.offset": r.offset}):
                try:
                    await handler(item.value, r)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise PartialFailure(n, exc) from exc

    handle.__doc__ = handler.__doc__
    return handle


def group_by(items: list[Item[T]], key: Callable[[Item[T]], Any]) -> dict[Any, list[Item[T]]]:
    out: dict[Any, list[Item[T]]] = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return out
