"""Composition root of the retrainer: Postgres, registry client, two consumers."""

from __future__ import annotations

import asyncio

from loopline_core import runtime
from loopline_core.db import create_pool, migrate
from loopline_core.outbox import Relay
from loopline_core.registry import RegistryClient
from loopline_core.service import serve_until, start_runtime

from loopline_retrainer.adapters.store import MIGRATIONS, SCHEMA, RetrainerStore
from loopline_retrainer.handlers.events import RetrainerHandlers
from loopline_retrainer.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = Settings()  # type: ignore[call-arg]
    rt = await start_runtime("retrainer", settings)
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), SCHEMA)
    await migrate(pool, SCHEMA, MIGRATIONS)
    registry = RegistryClient(settings.registry_addr)
    relay = Relay(pool, SCHEMA, rt.publisher, poll_interval_s=settings.outbox_poll_s)
    await relay.start()
    h = RetrainerHandlers(RetrainerStore(pool), registry, relay, rt.namer, settings)
    rt.consumer([rt.namer.alerts()], h.decode_alert, h.on_alert)
    rt.consumer([rt.namer.training_results()], h.decode_result, h.on_training_completed,
                group=rt.namer.group("retrainer-results"))
    rt.consumer([rt.namer.labels(settings.retrainer_dataset)], h.decode_label, h.on_label,
                group=rt.namer.group("retrainer-labels"))
    rt.closers += [registry.close, pool.close, relay.stop]  # reversed at stop: the relay before the pool
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
