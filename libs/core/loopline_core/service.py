"""What every service does at start: logging, tracing, metrics, the bus; and how it drains on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from loopline_core.kafka import Bus, Publisher, Record, RetryPolicy, TopicNamer, each
from loopline_core.kafka.delivery import BatchHandler, Delivery
from loopline_core.logs import configure_logging
from loopline_core.metrics import BUS_LAG, start_metrics_server
from loopline_core.settings import CoreSettings
from loopline_core.telemetry import configure_tracing

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The adapters a service's composition root hands to its handlers."""

    name: str
    settings: CoreSettings
    namer: TopicNamer
    bus: Bus
    metrics_port: int = 0
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    checks: list[Callable[[], bool]] = field(default_factory=list)
    """Extra readiness conditions (a model loaded, a dependency answering)."""
    connected: bool = False
    """The broker answered the producer's first connection."""
    lag_interval_s: float = 5.0
    """How often each subscription's lag is measured into ``loopline_bus_lag``."""

    @property
    def publisher(self) -> Publisher:
        return self.bus.publisher

    def ready(self) -> bool:
        """Ready: the broker answered and answers, every subscription's consumer has joined its group and
        received an assignment (see ``Delivery.ready``), and every extra check passes."""
        return self.connected and self.bus.ready and all(check() for check in self.checks)

    def subscribe(self, topics: Iterable[str], decode: Callable[[Record], Any], handle: BatchHandler[Any], *,
                  group: str | None = None, max_records: int | None = None,
                  auto_offset_reset: Literal["earliest", "latest"] = "earliest",
                  max_poll_interval_ms: int = 300_000) -> Delivery[Any]:
        """A batch subscription (the hot path): ``handle`` gets every decoded record of a batch at once."""
        s = self.settings
        return self.bus.subscribe(topics, group or self.namer.group(self.name), decode, handle,
                                  max_records=max_records or s.kafka_max_records, linger_ms=s.kafka_linger_ms,
                                  auto_offset_reset=auto_offset_reset, max_poll_interval_ms=max_poll_interval_ms)

    def consumer(self, topics: list[str], decode: Callable[[Record], Any],
                 handler: Callable[[Any, Record], Awaitable[None]], *, group: str | None = None,
                 auto_offset_reset: Literal["earliest", "latest"] = "earliest", max_records: int = 50,
                 max_poll_interval_ms: int = 300_000) -> Delivery[Any]:
        """A per-record subscription: ``handler(message, record)`` for each record, in order."""
        return self.subscribe(topics, decode, each(handler), group=group, max_records=max_records,
                              auto_offset_reset=auto_offset_reset, max_poll_interval_ms=max_poll_interval_ms)


async def start_runtime(name: str, settings: CoreSettings) -> Runtime:
    configure_logging(name, settings.log_level, settings.log_format)
    configure_tracing(name, settings.otel_exporter, settings.otel_endpoint, settings.otel_sample_ratio)
    namer = TopicNamer(settings.topic_prefix)
    policy = RetryPolicy(initial_backoff_s=settings.retry_initial_backoff_s, max_backoff_s=settings.retry_max_backoff_s,
                         budget_s=settings.retry_budget_s, max_attempts=settings.retry_max_attempts,
                         not_ready_after=settings.retry_not_ready_after,
                         handler_timeout_s=settings.retry_handler_timeout_s)
    bus = Bus(settings.kafka_bootstrap, f"loopline-{name}", namer.dead_letter_for, policy, service=name)
    rt = Runtime(name, settings, namer, bus)
    rt.metrics_port = start_metrics_server(settings.metrics_port, settings.bind_host, ready=rt.ready)
    log.info("starting", extra={"config": settings.masked(), "metrics_port": rt.metrics_port})
    await bus.connect()
    rt.connected = True
    return rt


async def watch_lag(rt: Runtime) -> None:
    """Every ``lag_interval_s``, set ``loopline_bus_lag`` for each partition the subscriptions own, and
    drop the series of partitions they no longer own (another member reports those)."""
    shown: set[tuple[str, str, str]] = set()
    while True:
        now: set[tuple[str, str, str]] = set()
        for d in rt.bus.deliveries:
            for tp, lag in (await d.lag()).items():
                labels = (d.group, tp.topic, str(tp.partition))
                BUS_LAG.labels(*labels).set(lag)
                now.add(labels)
        for labels in shown - now:
            with contextlib.suppress(KeyError):
                BUS_LAG.remove(*labels)
        shown = now
        await asyncio.sleep(rt.lag_interval_s)


async def serve_until(rt: Runtime, stop: asyncio.Event) -> None:
    """Run the runtime's subscribers until ``stop``; then finish the batches in hand, commit, close."""
    await rt.bus.start()
    log.info("consuming", extra={"subscriptions": [d.name for d in rt.bus.deliveries]})
    lag = asyncio.create_task(watch_lag(rt), name="consumer-lag")
    await stop.wait()
    lag.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag
    await rt.bus.drain()
    for close in reversed(rt.closers):  # before the producer closes: closers may still publish (flush)
        await close()
    await rt.bus.close()
    log.info("drained and stopped")
