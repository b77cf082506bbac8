"""At-least-once Kafka consumption and traced publishing on aiokafka.

Why aiokafka directly rather than a framework's subscriber: the consumer below must control the
exact order of "handle, then commit", seek back on a transient failure, and dead-letter a
permanent one without stalling its partition. Those few rules are the whole delivery contract of
Loopline, so they live in one readable loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, TopicAlreadyExistsError
from opentelemetry import trace

from loopline_core import metrics
from loopline_core.errors import LooplineError
from loopline_core.telemetry import extract_headers, inject_headers

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("loopline.kafka")

T = TypeVar("T")

DLQ_REASON = "x-loopline-dlq-reason"
DLQ_KIND = "x-loopline-dlq-kind"
DLQ_SOURCE = "x-loopline-dlq-source"
CONTENT_TYPE = "content-type"
MESSAGE_TYPE = "x-loopline-type"


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record, decoupled from aiokafka's types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None


class Publisher:
    """A producer that adds trace context and type headers to every record."""

    def __init__(self, bootstrap: str, *, client_id: str = "loopline", idempotent: bool = False) -> None:
        # Idempotence needs InitProducerId, which the local Tansu broker lacks; Apache Kafka has it.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id=client_id, acks="all",
            enable_idempotence=idempotent, linger_ms=5,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, topic: str, value: bytes, *, key: str | bytes | None = None,
                      headers: Iterable[tuple[str, bytes]] = (), content_type: str = "application/x-protobuf",
                      message_type: str | None = None) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        hdrs = [(k, v) for k, v in headers if k not in {CONTENT_TYPE, MESSAGE_TYPE}]
        hdrs.append((CONTENT_TYPE, content_type.encode()))
        if message_type:
            hdrs.append((MESSAGE_TYPE, message_type.encode()))
        with _tracer.start_as_current_span(f"{topic} publish", kind=trace.SpanKind.PRODUCER,
                                           attributes={"messaging.destination.name": topic}):
            kb = key.encode() if isinstance(key, str) else key
            await self._producer.send_and_wait(topic, value, key=kb, headers=inject_headers(hdrs))


Handler = Callable[[T, Record], Awaitable[None]]
Decoder = Callable[[Record], T]


@dataclass
class Consumer(Generic[T]):
    """Consumes ``topics`` in consumer group ``group``; commits only after the handler returned.

    * decode fails, or the handler raises a permanent :class:`LooplineError` -> the record goes
      to its dead-letter topic with the reason in headers, then its offset is committed.
    * the handler raises anything else -> nothing is committed past that record; the consumer
      seeks back and the record is redelivered after a back-off (at least once).
    """

    bootstrap: str
    group: str
    topics: list[str]
    decode: Decoder[T]
    handler: Handler[T]
    publisher: Publisher
    dead_letter_for: Callable[[str], str]
    client_id: str = "loopline"
    max_records: int = 500
    retry_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    auto_offset_reset: str = "earliest"
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.bootstrap, group_id=self.group, client_id=self.client_id,
            enable_auto_commit=False, auto_offset_reset=self.auto_offset_reset,
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000, max_poll_interval_ms=300_000,
        )
        await self._consumer.start()

    async def run(self) -> None:
        """Consume until :meth:`stop`; finishes the record in hand, commits, leaves the group."""
        assert self._consumer is not None, "start() first"
        failures: dict[TopicPartition, int] = {}
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=200, max_records=self.max_records)
                for tp, records in batches.items():
                    await self._handle_partition(tp, records, failures)
                    if self._stopping.is_set():
                        break
        finally:
            await self._consumer.stop()

    async def stop(self) -> None:
        self._stopping.set()

    async def _handle_partition(self, tp: TopicPartition, records: list[Any],
                                failures: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        done: int | None = None
        for raw in records:
            if self._stopping.is_set():
                break
            record = Record(raw.topic, raw.partition, raw.offset, raw.key, raw.value or b"",
                            tuple(raw.headers or ()), raw.timestamp)
            ok = await self._handle_one(record)
            if not ok:
                attempts = failures.get(tp, 0) + 1
                failures[tp] = attempts
                await self._commit(tp, done)
                self._consumer.seek(tp, record.offset)
                delay = min(self.retry_backoff_s * 2 ** (attempts - 1), self.max_backoff_s)
                await asyncio.sleep(delay)
                return
            failures.pop(tp, None)
            done = record.offset
        await self._commit(tp, done)

    async def _handle_one(self, record: Record) -> bool:
        """Handle one record; True when its offset may be committed."""
        started = time.perf_counter()
        ctx = extract_headers(record.headers)
        with _tracer.start_as_current_span(f"{record.topic} process", context=ctx, kind=trace.SpanKind.CONSUMER,
                                           attributes={"messaging.destination.name": record.topic,
                                                       "messaging.kafka.offset": record.offset}):
            try:
                message = self.decode(record)
            except LooplineError as exc:
                await self._dead_letter(record, exc.message, exc.kind.value, exc.details)
                return True
            except Exception as exc:  # noqa: BLE001 - any decode failure is this record's fault
                await self._dead_letter(record, f"undecodable: {exc}", "INVALID_ARGUMENT")
                return True
            try:
                await self.handler(message, record)
            except LooplineError as exc:
                if not exc.kind.permanent:
                    log.warning("transient failure, will redeliver", extra={"topic": record.topic,
                                                                            "offset": record.offset,
                                                                            "error": str(exc)})
                    metrics.BUS_CONSUMED.labels(record.topic, "retry").inc()
                    return False
                await self._dead_letter(record, exc.message, exc.kind.value, exc.details)
                return True
            except Exception as exc:
                log.warning("handler failed, will redeliver", exc_info=True,
                            extra={"topic": record.topic, "offset": record.offset, "error": repr(exc)})
                metrics.BUS_CONSUMED.labels(record.topic, "retry").inc()
                return False
        metrics.BUS_CONSUMED.labels(record.topic, "ok").inc()
        metrics.BUS_HANDLE_SECONDS.labels(record.topic).observe(time.perf_counter() - started)
        return True

    async def _dead_letter(self, record: Record, reason: str, kind: str,
                           details: dict[str, str] | None = None) -> None:
        topic = self.dead_letter_for(record.topic)
        headers = [*record.headers, (DLQ_REASON, reason.encode()), (DLQ_KIND, kind.encode()),
                   (DLQ_SOURCE, f"{record.topic}/{record.partition}/{record.offset}".encode())]
        headers += [(f"x-loopline-dlq-{k}", v.encode()) for k, v in (details or {}).items()]
        ctype = record.header(CONTENT_TYPE) or "application/octet-stream"
        await self.publisher.publish(topic, record.value, key=record.key, headers=headers, content_type=ctype,
                                     message_type=record.header(MESSAGE_TYPE))
        metrics.BUS_DEAD_LETTERED.labels(record.topic).inc()
        metrics.BUS_CONSUMED.labels(record.topic, "dead_lettered").inc()
        log.info("dead-lettered", extra={"topic": record.topic, "offset": record.offset, "reason": reason})

    async def _commit(self, tp: TopicPartition, last_done: int | None) -> None:
        if last_done is None or self._consumer is None:
            return
        try:
            await self._consumer.commit({tp: last_done + 1})
        except CommitFailedError:
            # The partition moved to another member in a rebalance; it will redeliver from the last
            # commit and the idempotent sinks absorb the repeat.
            log.info("commit lost to a rebalance", extra={"topic": tp.topic, "partition": tp.partition})


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int = 3) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()
