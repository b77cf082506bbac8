"""Seen event ids, in Postgres (schema ``ingest``)."""

from __future__ import annotations

import asyncpg
from loopline_core.db import Migration

SCHEMA = "ingest"
MIGRATIONS = [Migration(1, "seen_events", """
    create table seen_events (event_id text primary key, dataset text not null,
                              seen_at timestamptz not null default now())""")]


class SeenEvents:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def seen(self, event_id: str) -> bool:
        return bool(await self.pool.fetchval("select 1 from seen_events where event_id=$1", event_id))

    async def mark(self, event_id: str, dataset: str) -> None:
        await self.pool.execute("insert into seen_events(event_id, dataset) values ($1,$2) on conflict do nothing",
                                event_id, dataset)
