"""Training requests and promotion decisions in Postgres (schema ``retrainer``)."""

from __future__ import annotations

import asyncpg
from loopline_core.db import Migration
from loopline_core.outbox import OutboxEvent, enqueue, outbox_migration

from loopline_retrainer.adapters.rollouts import MIGRATION as ROLLOUTS

SCHEMA = "retrainer"
MIGRATIONS = [Migration(1, "requests_decisions", """
    create table requests (
        request_id text primary key, model_name text not null, cause_event_id text not null unique,
        reason text not null, status text not null, created_at timestamptz not null default now(),
        finished_at timestamptz, labels_needed bigint not null default 0);
    create table labels_seen (event_id text primary key);
    create table label_count (dataset text primary key, n bigint not null);
    create table decisions (
        result_event_id text primary key, model_name text not null, version int not null,
        promoted boolean not null, reason text not null, at timestamptz not null default now());
    create table skipped (
        cause_event_id text primary key, model_name text not null, reason text not null,
        at timestamptz not null default now());
"""), outbox_migration(2), ROLLOUTS]


class RetrainerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def request_for(self, cause_event_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("select * from requests where cause_event_id=$1", cause_event_id)

    async def ages(self, model: str) -> tuple[float | None, float | None]:
        """(age of the request in flight, seconds since the last one finished), None when there is none."""
        row = await self.pool.fetchrow(
            "select (select extract(epoch from now() - max(created_at)) from requests "
            "        where model_name=$1 and status in ('pending', 'in_flight')) in_flight, "
            "       (select extract(epoch from now() - max(finished_at)) from requests "
            "        where model_name=$1 and status in ('done', 'failed')) done", model)
        return (float(row["in_flight"]) if row["in_flight"] is not None else None,
                float(row["done"]) if row["done"] is not None else None)

    async def add_request(self, request_id: str, model: str, cause: str, reason: str, dataset: str,
                          fresh_labels: int) -> None:
        """A pending request that becomes due once ``fresh_labels`` more labels have arrived."""
        await self.pool.execute(
            "insert into requests(request_id, model_name, cause_event_id, reason, status, labels_needed) "
            "values ($1,$2,$3,$4,'pending', coalesce((select n from label_count where dataset=$5), 0) + $6) "
            "on conflict do nothing", request_id, model, cause, reason, dataset, fresh_labels)

    async def count_label(self, event_id: str, dataset: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval("insert into labels_seen(event_id) values ($1) on conflict do nothing "
                                      "returning true", event_id)
            if new:
                await conn.execute("insert into label_count(dataset, n) values ($1, 1) on conflict (dataset) "
                                   "do update set n = label_count.n + 1", dataset)

    async def due(self, dataset: str) -> list[asyncpg.Record]:
        """Pending requests whose label wait is over (and in-flight ones, which a replay republishes)."""
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "select * from requests where status='pending' and labels_needed <= "
            "coalesce((select n from label_count where dataset=$1), 0)", dataset)
        return rows

    async def mark_in_flight(self, request_id: str, request: OutboxEvent) -> bool:
        """Move a pending request in flight and put its ``request`` event in the outbox, in one
        transaction; False (and no event) when it was no longer pending."""
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval("update requests set status='in_flight' where request_id=$1 "
                                        "and status='pending' returning true", request_id)
            if moved:
                await enqueue(conn, request)
            return bool(moved)

    async def skip(self, cause: str, model: str, reason: str) -> None:
        await self.pool.execute("insert into skipped(cause_event_id, model_name, reason) values ($1,$2,$3) "
                                "on conflict do nothing", cause, model, reason)

    async def finish(self, request_id: str, ok: bool) -> None:
        await self.pool.execute("update requests set status=$2, finished_at=now() where request_id=$1 "
                                "and status in ('pending', 'in_flight')", request_id, "done" if ok else "failed")

    async def decided(self, result_event_id: str) -> bool:
        return bool(await self.pool.fetchval("select 1 from decisions where result_event_id=$1", result_event_id))

    async def decide(self, result_event_id: str, model: str, version: int, promoted: bool, reason: str) -> None:
        await self.pool.execute("insert into decisions(result_event_id, model_name, version, promoted, reason) "
                                "values ($1,$2,$3,$4,$5) on conflict do nothing",
                                result_event_id, model, version, promoted, reason)
