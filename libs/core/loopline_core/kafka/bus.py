"""The Kafka bus of one process: a FastStream ``KafkaBroker`` with telemetry and metrics middlewares,
its publisher, and batch subscribers that follow Loopline's delivery contract (see ``delivery``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import FAKE_CONSUMER, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY

from loopline_core.kafka.delivery import BatchHandler, Decoder, Delivery, RetryPolicy
from loopline_core.kafka.publisher import Publisher, make_broker

T = TypeVar("T")
log = logging.getLogger(__name__)
_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage", "correlation_id"})


async def _parse(message: tuple[Any, ...]) -> KafkaMessage:
    """FastStream's batch parser decodes header values as strict UTF-8 before any handler runs, so one
    producer's odd header byte would fail the whole batch outside the delivery rules. This one
    cannot fail: headers are decoded leniently and the records are handed to ``Delivery`` untouched.

    ``batch_headers`` feeds only the telemetry middleware (a link per trace, baggage); records
    published together share one trace context, so one entry per distinct context is kept: the
    links are the same and a 500-record batch costs a few extractions instead of 500.
    """
    distinct: dict[tuple[str, str], dict[str, str]] = {}
    for m in message:
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers or ())
                   if k in _TRACE_HEADERS}
        if "traceparent" in headers and "correlation_id" not in headers:
            # FastStream links one context per correlation id; an outside producer (or a record of a
            # batched log) sets none, and each distinct context must still get its link
            headers["correlation_id"] = headers["traceparent"]
        distinct.setdefault((headers.get("traceparent", ""), headers.get("baggage", "")), headers)
    batch_headers = list(distinct.values())
    first, last = message[0], message[-1]
    headers = batch_headers[0] if batch_headers else {}
    return KafkaMessage(message, b"", headers=headers, batch_headers=batch_headers,
                        message_id=f"{first.topic}-{first.partition}-{first.offset}-{last.offset}",
                        consumer=FAKE_CONSUMER)


async def _raw(msg: Any) -> Any:
    return msg.raw_message


class Bus:
    """One broker connection per process: publish, subscribe in batches, report readiness."""

    def __init__(self, bootstrap: str, client_id: str, dead_letter_for: Callable[[str], str],
                 policy: RetryPolicy | None = None, *, service: str = "loopline") -> None:
        self.bootstrap = bootstrap
        self.policy = policy or RetryPolicy()
        self.dead_letter_for = dead_letter_for
        self.broker: KafkaBroker = make_broker(bootstrap, client_id, middlewares=(
            KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service, metrics_prefix="loopline_faststream"),
        ))
        self.publisher = Publisher(broker=self.broker)
        self.deliveries: list[Delivery[Any]] = []
        self.broker_failures = 0
        """Consecutive failed broker probes (a consumer whose broker is gone just fetches nothing,
        so its deliveries alone would never notice)."""
        self._probe: asyncio.Task[None] | None = None

    def subscribe(self, topics: Iterable[str], group: str, decode: Decoder[T], handle: BatchHandler[T], *,
                  max_records: int = 500, linger_ms: int = 10,
                  auto_offset_reset: Literal["earliest", "latest"] = "earliest",
                  description: str | None = None, max_poll_interval_ms: int = 300_000,
                  fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 100) -> Delivery[T]:
        """Consume ``topics`` in group ``group`` in batches of up to ``max_records``.

        ``linger_ms`` only bounds the wait when nothing is buffered; a subscriber that wants large
        batches from a slow stream raises ``fetch_min_bytes`` (the broker holds a fetch until that
        much is there or ``fetch_max_wait_ms`` passed)."""
        names = list(topics)
        delivery: Delivery[T] = Delivery(f"{group}:{','.join(names)}", decode, handle, self.publisher,
                                         self.dead_letter_for, self.policy)
        sub = self.broker.subscriber(
            *names, group_id=group, batch=True, max_records=max_records, batch_timeout_ms=linger_ms,
            ack_policy=AckPolicy.MANUAL, auto_offset_reset=auto_offset_reset, listener=delivery.listener,
            parser=_parse, decoder=_raw, session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            max_poll_interval_ms=max_poll_interval_ms, fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_min_bytes=fetch_min_bytes,
            title=f"{group}:{','.join(names)}", description=description or handle.__doc__)
        sub(delivery.on_batch)
        delivery.subscriber = sub
        self.deliveries.append(delivery)
        return delivery

    @property
    def ready(self) -> bool:
        return self.broker_failures < self.policy.not_ready_after and all(d.ready for d in self.deliveries)

    async def start(self) -> None:
        """Connect the producer and start every subscriber (each joins its group)."""
        await self.broker.start()
        self._start_probe()

    async def connect(self) -> None:
        """Connect only the producer (a process that publishes but does not consume yet)."""
        await self.broker.connect()
        self._start_probe()

    def _start_probe(self) -> None:
        if self._probe is None:
            self._probe = asyncio.create_task(self._watch_broker(), name="broker-probe")

    async def _watch_broker(self, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        """Ask the broker for its metadata every second; readiness follows the answers."""
        client = self.publisher._aiokafka().client
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    await client.fetch_all_metadata()
            except (KafkaError, OSError, TimeoutError) as exc:
                self.broker_failures += 1
                if self.broker_failures == self.policy.not_ready_after:
                    log.warning("broker unreachable: not ready", extra={"error": repr(exc)[:200]})
            else:
                if self.broker_failures >= self.policy.not_ready_after:
                    log.info("broker reachable again: ready")
                self.broker_failures = 0
            await asyncio.sleep(interval_s)

    async def drain(self) -> None:
        """Finish the batches in hand (they commit) and take no more."""
        for delivery in self.deliveries:
            await delivery.drain()

    async def close(self) -> None:
        """Leave the groups and close the producer."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        await self.broker.stop()

    async def stop(self) -> None:
        await self.drain()
        await self.close()


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
