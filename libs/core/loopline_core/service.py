"""What every service does at start: logging, tracing, metrics, publisher; and how it drains on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loopline_core.kafka import Consumer, Publisher, TopicNamer
from loopline_core.logs import configure_logging
from loopline_core.metrics import start_metrics_server
from loopline_core.settings import CoreSettings
from loopline_core.telemetry import configure_tracing

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The adapters a service's composition root hands to its handlers."""

    name: str
    settings: CoreSettings
    namer: TopicNamer
    publisher: Publisher
    metrics_port: int
    consumers: list[Consumer[Any]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def consumer(self, topics: list[str], decode: Callable[[Any], Any],
                 handler: Callable[[Any, Any], Awaitable[None]], *, group: str | None = None,
                 auto_offset_reset: str = "earliest") -> Consumer[Any]:
        c: Consumer[Any] = Consumer(
            bootstrap=self.settings.kafka_bootstrap, group=group or self.namer.group(self.name), topics=topics,
            decode=decode, handler=handler, publisher=self.publisher, dead_letter_for=self.namer.dead_letter_for,
            client_id=f"loopline-{self.name}", auto_offset_reset=auto_offset_reset)
        self.consumers.append(c)
        return c


async def start_runtime(name: str, settings: CoreSettings) -> Runtime:
    configure_logging(name, settings.log_level, settings.log_format)
    configure_tracing(name, settings.otel_exporter, settings.otel_endpoint)
    port = start_metrics_server(settings.metrics_port)
    log.info("starting", extra={"config": settings.masked(), "metrics_port": port})
    publisher = Publisher(settings.kafka_bootstrap, client_id=f"loopline-{name}")
    await publisher.start()
    return Runtime(name, settings, TopicNamer(settings.topic_prefix), publisher, port)


async def serve_until(rt: Runtime, stop: asyncio.Event) -> None:
    """Run the runtime's consumers until ``stop``; then finish in-flight records, commit, close."""
    for c in rt.consumers:
        await c.start()
    log.info("consuming", extra={"topics": [t for c in rt.consumers for t in c.topics]})
    tasks = [asyncio.create_task(c.run()) for c in rt.consumers]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for c in rt.consumers:
        await c.stop()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    stopper.cancel()
    for close in reversed(rt.closers):
        await close()
    await rt.publisher.stop()
    log.info("drained and stopped")
