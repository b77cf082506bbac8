"""Composition root of the monitor: Postgres, references, reports, the watch, the consumers of predictions and
labels and of LLM generations and feedback (each where configured), the sweeps of unmatched labels and feedback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loopline_core import runtime
from loopline_core.db import create_pool, migrate
from loopline_core.objstore import ObjectStore
from loopline_core.outbox import Relay
from loopline_core.registry import RegistryClient
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load
from loopline_core.signing import TrustStore
from loopline_ml.embeddings import Embedder
from loopline_ml.pii import Redactor

from loopline_monitor.adapters.llm_store import LlmStore
from loopline_monitor.adapters.references import References
from loopline_monitor.adapters.reports import Reports
from loopline_monitor.adapters.store import MIGRATIONS, SCHEMA, MonitorStore
from loopline_monitor.handlers.labels import LabelHandler
from loopline_monitor.handlers.llm import LlmWatch
from loopline_monitor.handlers.predictions import PredictionHandler
from loopline_monitor.handlers.watch import Watch
from loopline_monitor.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "monitor")
    rt = await start_runtime("monitor", settings)
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), SCHEMA)
    await migrate(pool, SCHEMA, MIGRATIONS)
    objects = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value())
    refs = References(RegistryClient(settings.registry_addr), objects,
                      TrustStore.from_dir(Path(settings.trusted_keys_dir)), rt.publisher, rt.namer)
    relay = Relay(pool, SCHEMA, rt.publisher, poll_interval_s=settings.outbox_poll_s)
    await relay.start()
    store = MonitorStore(pool)
    reports = Reports(objects)
    watch = Watch(store, refs, reports, relay, rt.namer, settings)
    lock = asyncio.Lock()  # the two consumers share the watch's in-memory state
    predictions = PredictionHandler(store, watch, lock)
    labels = LabelHandler(store, watch, lock, rt.publisher, rt.namer, settings)
    sweeps: list[asyncio.Task[None]] = []
    if settings.monitor_models:  # an LLM-only monitor (MODELS=[]) joins no predictions or labels group
        rt.subscribe([rt.namer.predictions(m) for m in settings.monitor_models], predictions.decode,
                     predictions.on_predictions)
        rt.consumer([rt.namer.labels(settings.monitor_dataset)], labels.decode, labels.on_label,
                    group=rt.namer.group("monitor-labels"))
        sweeps.append(asyncio.create_task(labels.sweep(stop)))
    if settings.monitor_llm_models:  # MiniLM is loaded only where an LLM is watched
        threads, batch = settings.monitor_embed_threads, settings.monitor_embed_batch
        llm = LlmWatch(LlmStore(pool), watch, lambda: Embedder(threads=threads, batch_size=batch), rt.publisher,
                       rt.namer, settings, redactor=Redactor)
        await llm.embedder()  # loaded before the consumers start: the first batch does not wait for them
        await llm.redactor()
        rt.subscribe([rt.namer.generations(x) for x in settings.monitor_llm_models], llm.decode_generation,
                     llm.on_generations, group=rt.namer.group("monitor-generations"), max_records=200)
        rt.consumer([rt.namer.feedback(x) for x in settings.monitor_llm_models], llm.decode_feedback,
                    llm.on_feedback, group=rt.namer.group("monitor-feedback"))
        sweeps.append(asyncio.create_task(llm.sweep(stop)))
    rendering = asyncio.create_task(reports.run())

    async def finish_background() -> None:
        for sweep in sweeps:
            await sweep
        await reports.close()  # the reports already queued are stored before the store closes
        await rendering

    rt.closers += [refs.close, pool.close, relay.stop, finish_background]  # reversed at stop
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
