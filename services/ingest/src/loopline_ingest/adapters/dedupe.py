"""Seen event ids, in Postgres (schema ``ingest``): one query to check a batch, one to mark it."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from loopline_core.db import Migration

SCHEMA = "ingest"
MIGRATIONS = [Migration(1, "seen_events", """
    create table seen_events (event_id text primary key, dataset text not null,
                              seen_at timestamptz not null default now())""")]


class SeenEvents:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def seen(self, event_ids: Sequence[str]) -> set[str]:
        """Which of ``event_ids`` were forwarded before."""
        rows = await self.pool.fetch("select event_id from seen_events where event_id = any($1::text[])",
                                     list(event_ids))
        return {r["event_id"] for r in rows}

    async def mark(self, events: Sequence[tuple[str, str]]) -> None:
        """Mark ``(event_id, dataset)`` pairs as forwarded (one statement for the batch)."""
        if events:
            await self.pool.execute(
                "insert into seen_events(event_id, dataset) select * from unnest($1::text[], $2::text[]) "
                "on conflict do nothing", [e for e, _ in events], [d for _, d in events])
