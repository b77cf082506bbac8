"""Publishing through FastStream's broker: one record, or a batch whose acks are awaited once."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.partitioner import murmur2
from faststream.kafka import KafkaBroker
from faststream.kafka.response import KafkaResponse

from loopline_core.kafka.records import CONTENT_TYPE, MESSAGE_TYPE

_CHUNK_BYTES = 512 * 1024
"""Records per produce call are cut to stay well under the producer's batch buffer (``max_batch_size``)."""


def make_broker(bootstrap: str, client_id: str, *, middlewares: Sequence[Any] = (),
                idempotent: bool = False, request_timeout_ms: int = 15_000) -> KafkaBroker:
    """A FastStream ``KafkaBroker`` with Loopline's producer settings.

    Idempotence needs InitProducerId, which the local Tansu broker lacks (Apache Kafka has it), so
    it is off unless asked for. FastStream's telemetry middleware puts the trace context in every
    record's headers. The request timeout is short so a send to a broker that is down
    fails within one retry attempt instead of 40 s. Per-message logs go to DEBUG: at thousands of
    records a second FastStream's INFO lines would cost more than the work.
    """
    import logging  # noqa: PLC0415

    from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware  # noqa: PLC0415

    return KafkaBroker(bootstrap, client_id=client_id, acks="all", enable_idempotence=idempotent, linger_ms=5,
                       max_batch_size=4 * 1024 * 1024, max_request_size=4 * 1024 * 1024,
                       request_timeout_ms=request_timeout_ms,
                       middlewares=(KafkaTelemetryMiddleware(), *middlewares),
                       log_level=logging.DEBUG, apply_types=False, graceful_timeout=30.0)


def _headers(headers: Iterable[tuple[str, bytes | str]], content_type: str | None,
             message_type: str | None) -> dict[str, str]:
    # FastStream carries header values as str; a non-UTF-8 byte from an outside producer is replaced
    # rather than failing the publish (the record's value is always passed through byte for byte).
    out = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in headers}
    if content_type:
        out[CONTENT_TYPE] = content_type
    if message_type:
        out[MESSAGE_TYPE] = message_type
    return out


def _key(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class Publisher:
    """Publishes on a FastStream ``KafkaBroker`` (its middlewares add trace context and metrics)."""

    def __init__(self, bootstrap: str | None = None, *, client_id: str = "loopline",
                 broker: KafkaBroker | None = None) -> None:
        if broker is None and bootstrap is None:
            raise ValueError("a Publisher needs a bootstrap address or a broker")
        self.broker = broker or make_broker(bootstrap or "", client_id)
        self._owned = broker is None

    async def start(self) -> None:
        if self._owned:
            await self.broker.connect()

    async def stop(self) -> None:
        if self._owned:
            await self.broker.stop()

    async def publish(self, topic: str, value: bytes, *, key: str | bytes | None = None,
                      headers: Iterable[tuple[str, bytes | str]] = (), content_type: str = "application/x-protobuf",
                      message_type: str | None = None) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        await self.broker.publish(value, topic, key=_key(key), headers=_headers(headers, content_type, message_type))

    async def publish_nowait(self, topic: str, value: bytes, *, key: str | bytes | None = None,
                             headers: Iterable[tuple[str, bytes | str]] = (),
                             content_type: str = "application/x-protobuf",
                             message_type: str | None = None) -> asyncio.Future[Any]:
        """Queue one record in the producer and return the future of its acknowledgement."""
        fut: asyncio.Future[Any] = await self.broker.publish(
            value, topic, key=_key(key), headers=_headers(headers, content_type, message_type), no_confirm=True)
        return fut

    async def publish_batch(self, topic: str, records: Sequence[tuple[str | bytes | None, bytes]], *,
                            headers: Iterable[tuple[str, bytes | str]] = (),
                            content_type: str = "application/x-protobuf", message_type: str | None = None) -> None:
        """Send ``(key, value)`` records with the same headers; returns once the broker acknowledged all.

        Records are grouped by the partition the producer's partitioner picks for their key, so
        per-key order holds exactly as with one-by-one sends, and each partition gets one produce
        batch per chunk instead of one request per record.
        """
        if not records:
            return
        partitions = sorted(await self._aiokafka().partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
        for key, value in records:
            k = _key(key)
            by_partition[_partition(k, partitions)].append((k, value))
        hdrs = _headers(headers, content_type, message_type)
        futures: list[asyncio.Future[Any]] = []
        for partition, items in by_partition.items():
            for chunk in _chunks(items):
                futures.append(await self.broker.publish_batch(
                    *[KafkaResponse(v, key=k) for k, v in chunk], topic=topic, partition=partition,
                    headers=hdrs, no_confirm=True))
        await asyncio.gather(*futures)


    async def publish_traced(self, topic: str, records: Sequence[tuple[str | bytes | None, bytes, str]], *,
                             content_type: str = "application/x-protobuf", message_type: str | None = None) -> None:
        """Like :meth:`publish_batch`, for ``(key, value, traceparent)`` records that each continue a trace
        of their own (rows served by many calls, sent by one background task): each record carries its
        own ``traceparent`` header, which FastStream's batch publish (one set of headers per batch)
        cannot do, so these go through aiokafka's batch builder under it."""
        if not records:
            return
        producer = self._aiokafka()
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes | None, bytes, str]]] = defaultdict(list)
        for key, value, parent in records:
            k = _key(key)
            by_partition[_partition(k, partitions)].append((k, value, parent))
        common = [(k, v.encode()) for k, v in _headers((), content_type, message_type).items()]
        futures: list[asyncio.Future[Any]] = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for k, v, parent in items:
                headers = [*common, ("traceparent", parent.encode())] if parent else common
                if batch.append(timestamp=None, key=k, value=v, headers=headers) is None:  # full: send, go on
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(timestamp=None, key=k, value=v, headers=headers)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    def _aiokafka(self) -> Any:
        """aiokafka's producer under FastStream's, for its partitioner (FastStream has no public handle)."""
        return self.broker.config.producer._producer.producer  # type: ignore[attr-defined]


def _partition(key: bytes | None, partitions: list[int]) -> int:
    """aiokafka's default partitioner (Java client compatible murmur2 of the key), without its
    per-record metadata lookups; a record without a key goes to a random partition, as there."""
    if key is None:
        return random.choice(partitions)  # noqa: S311 - spreading load, not cryptography
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]  # type: ignore[no-any-return]


def _chunks(items: list[tuple[bytes | None, bytes]]) -> Iterable[list[tuple[bytes | None, bytes]]]:
    chunk: list[tuple[bytes | None, bytes]] = []
    size = 0
    for item in items:
        n = len(item[1]) + len(item[0] or b"") + 64
        if chunk and size + n > _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk
