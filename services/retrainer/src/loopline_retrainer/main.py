"""Composition root of the retrainer: Postgres, registry client, four consumers, the rollout checks and the
retraining schedule."""

from __future__ import annotations

import asyncio

from loopline_core import runtime
from loopline_core.db import create_pool, migrate
from loopline_core.outbox import Relay
from loopline_core.registry import RegistryClient
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load

from loopline_retrainer.adapters.rollouts import RolloutStore
from loopline_retrainer.adapters.store import MIGRATIONS, SCHEMA, RetrainerStore
from loopline_retrainer.handlers.events import RetrainerHandlers
from loopline_retrainer.handlers.retraining import RetrainingPolicy
from loopline_retrainer.handlers.rollouts import RolloutController
from loopline_retrainer.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "retrainer")
    rt = await start_runtime("retrainer", settings)
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), SCHEMA)
    await migrate(pool, SCHEMA, MIGRATIONS)
    registry = RegistryClient(settings.registry_addr)
    relay = Relay(pool, SCHEMA, rt.publisher, poll_interval_s=settings.outbox_poll_s)
    await relay.start()
    rollouts = RolloutController(RolloutStore(pool), registry, relay, rt.namer, settings)
    store = RetrainerStore(pool)
    retraining = RetrainingPolicy(store, registry, relay, rt.namer, settings)
    h = RetrainerHandlers(store, registry, relay, rt.namer, settings, rollouts, retraining)
    rt.consumer([rt.namer.alerts()], h.decode_alert, h.on_alert)
    rt.consumer([rt.namer.training_results()], h.decode_result, h.on_training_completed,
                group=rt.namer.group("retrainer-results"))
    rt.consumer([rt.namer.labels(settings.retrainer_dataset)], h.decode_label, h.on_label,
                group=rt.namer.group("retrainer-labels"))
    rt.subscribe([rt.namer.predictions(m) for m in settings.retrainer_rollout_models], rollouts.decode_prediction,
                 rollouts.on_predictions, group=rt.namer.group("retrainer-rollouts"))
    checks = asyncio.create_task(rollouts.run_checks(stop))
    schedules = asyncio.create_task(retraining.run_schedules(stop))

    async def finish_checks() -> None:  # a check in hand ends before the pool and the client close
        await checks
        await schedules

    # reversed at stop: the checks, then the relay, before the pool
    rt.closers += [registry.close, pool.close, relay.stop, finish_checks]
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
