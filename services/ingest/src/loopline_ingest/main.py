"""Composition root of ingest: settings -> runtime -> Postgres dedupe -> consumer."""

from __future__ import annotations

import asyncio

from loopline_core import runtime
from loopline_core.contracts import Contracts
from loopline_core.db import create_pool, migrate
from loopline_core.objstore import ObjectStore
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load

from loopline_ingest.adapters.archive import ArchiveWriter
from loopline_ingest.adapters.dedupe import MIGRATIONS, SCHEMA, SeenEvents
from loopline_ingest.handlers.archive import ArchiveHandler
from loopline_ingest.handlers.raw import RawHandler
from loopline_ingest.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "ingest")
    rt = await start_runtime("ingest", settings)
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), SCHEMA)
    await migrate(pool, SCHEMA, MIGRATIONS)
    contracts = Contracts.load(settings.contracts_dir)
    for dataset in settings.datasets:
        contracts.current(dataset)  # a dataset without a contract stops the start, not the first record
    handler = RawHandler(SeenEvents(pool), rt.publisher, rt.namer, contracts)
    rt.subscribe([rt.namer.raw(d) for d in settings.datasets], handler.decode, handler.on_raw)
    if settings.archive_enabled:
        objects = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value(),
                              region=settings.s3_region)
        archive = ArchiveHandler(ArchiveWriter(objects, settings.archive_prefix))
        rt.bus.subscribe([rt.namer.ingested(d) for d in settings.datasets], rt.namer.group("ingest-archive"),
                         archive.decode, archive.on_ingested, max_records=settings.archive_max_records,
                         linger_ms=settings.archive_linger_ms, fetch_min_bytes=settings.archive_min_bytes,
                         fetch_max_wait_ms=settings.archive_linger_ms)
    rt.closers.append(pool.close)
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
