"""Training requests, retraining decisions and promotion decisions in Postgres (schema ``retrainer``).

Decisions of the retraining policy are rows of ``retrain_decisions`` (keyed by cause and outcome, so a
redelivered alert or label decides nothing twice), each written in the same transaction as its
``RetrainDecided`` outbox event and, for a request, as the request's own change. Decisions for one
model are taken under a transaction-scoped advisory lock on the model, so two consumers (alerts,
labels) and the schedule never let two runs of one model through at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from loopline_core.db import Migration
from loopline_core.outbox import OutboxEvent, enqueue, outbox_migration

from loopline_retrainer.adapters.rollouts import MIGRATION as ROLLOUTS
from loopline_retrainer.domain.policy import Busy

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
"""), outbox_migration(2), ROLLOUTS, Migration(4, "retraining_policy", """
    alter table requests
        add column trigger text not null default 'feature_drift',
        add column evidence text not null default '{}',
        add column episode_id text not null default '',
        add column mode text not null default 'full',
        add column window_start timestamptz,
        add column max_rows bigint not null default 0,
        add column labels_at bigint not null default 0;
    create index requests_episode on requests (model_name, episode_id);
    create table retrain_decisions (
        decision_id text primary key, model_name text not null, decision text not null, code text not null,
        reason text not null, trigger text not null, evidence text not null, cause_event_id text not null,
        request_id text not null, mode text not null, window_start timestamptz,
        at timestamptz not null default now());
    create index retrain_decisions_model on retrain_decisions (model_name, at);
    create index retrain_decisions_cause on retrain_decisions (cause_event_id);
    create table schedule_anchors (model_name text primary key, at timestamptz not null default now());
    drop table skipped;
""")]


@dataclass(frozen=True)
class Decided:
    """One row of ``retrain_decisions`` (what ``RetrainDecided`` says)."""

    decision_id: str
    model: str
    decision: str
    code: str
    reason: str
    trigger: str
    evidence: str
    cause_event_id: str
    request_id: str
    mode: str
    window_start: float


@dataclass(frozen=True)
class NewRequest:
    request_id: str
    model: str
    cause_event_id: str
    reason: str
    trigger: str
    evidence: str
    episode_id: str
    mode: str
    window_start: float
    max_rows: int
    wait_labels: int


def _ts(epoch_s: float) -> float | None:
    return epoch_s or None


class ModelTx:
    """A transaction holding the model's advisory lock: read the model's state and record decisions."""

    def __init__(self, conn: asyncpg.Connection, model: str, dataset: str) -> None:
        self.conn = conn
        self.model = model
        self.dataset = dataset

    async def busy(self) -> Busy:
        """The age of the request waiting or in flight, and seconds since the last one finished."""
        row = await self.conn.fetchrow(
            "select (select extract(epoch from now() - max(created_at)) from requests "
            "        where model_name=$1 and status in ('pending', 'in_flight')) in_flight, "
            "       (select extract(epoch from now() - max(finished_at)) from requests "
            "        where model_name=$1 and status in ('done', 'failed')) done", self.model)
        return Busy(float(row["in_flight"]) if row["in_flight"] is not None else None,
                    float(row["done"]) if row["done"] is not None else None)

    async def episode_requested(self, episode_id: str) -> bool:
        return bool(episode_id) and bool(await self.conn.fetchval(
            "select 1 from requests where model_name=$1 and episode_id=$2", self.model, episode_id))

    async def labels(self) -> int:
        n = await self.conn.fetchval("select n from label_count where dataset=$1", self.dataset)
        return int(n or 0)

    async def labels_at_last_request(self) -> int:
        """The label count when the model's newest request was made (0: none yet)."""
        return int(await self.conn.fetchval(
            "select coalesce(max(labels_at), 0) from requests where model_name=$1", self.model) or 0)

    async def last_request_at(self) -> float:
        """Epoch seconds of the newest request, else of when the schedule first saw the model."""
        await self.conn.execute("insert into schedule_anchors(model_name) values ($1) on conflict do nothing",
                                self.model)
        return float(await self.conn.fetchval(
            "select extract(epoch from greatest((select max(created_at) from requests where model_name=$1), "
            "(select at from schedule_anchors where model_name=$1)))", self.model))

    async def add_request(self, r: NewRequest) -> None:
        """A pending request, due once ``wait_labels`` more labels have arrived (0: at once)."""
        n = await self.labels()
        await self.conn.execute(
            "insert into requests(request_id, model_name, cause_event_id, reason, status, labels_needed, trigger, "
            "evidence, episode_id, mode, window_start, max_rows, labels_at) "
            "values ($1,$2,$3,$4,'pending',$5,$6,$7,$8,$9,to_timestamp($10),$11,$12) on conflict do nothing",
            r.request_id, r.model, r.cause_event_id, r.reason, n + r.wait_labels, r.trigger, r.evidence, r.episode_id,
            r.mode, _ts(r.window_start), r.max_rows, n)

    async def record(self, d: Decided, event: OutboxEvent) -> bool:
        return await record(self.conn, d, event)


async def record(conn: asyncpg.Connection, d: Decided, event: OutboxEvent) -> bool:
    """Store a decision and put its event in the outbox (same transaction); False if it was already stored."""
    new = await conn.fetchval(
        "insert into retrain_decisions(decision_id, model_name, decision, code, reason, trigger, evidence, "
        "cause_event_id, request_id, mode, window_start) values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,to_timestamp($11)) "
        "on conflict do nothing returning true", d.decision_id, d.model, d.decision, d.code, d.reason, d.trigger,
        d.evidence, d.cause_event_id, d.request_id, d.mode, _ts(d.window_start))
    if new:
        await enqueue(conn, event)
    return bool(new)


class RetrainerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def model_tx(self, model: str, dataset: str) -> AsyncIterator[ModelTx]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(hashtext('retrainer:' || $1))", model)
            yield ModelTx(conn, model, dataset)

    async def handled(self, cause_event_id: str) -> bool:
        """Whether an event already led to a decision or a request (a redelivery decides nothing again)."""
        return bool(await self.pool.fetchval(
            "select exists(select 1 from retrain_decisions where cause_event_id=$1) "
            "or exists(select 1 from requests where cause_event_id=$1)", cause_event_id))

    async def count_label(self, event_id: str, dataset: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval("insert into labels_seen(event_id) values ($1) on conflict do nothing "
                                      "returning true", event_id)
            if new:
                await conn.execute("insert into label_count(dataset, n) values ($1, 1) on conflict (dataset) "
                                   "do update set n = label_count.n + 1", dataset)

    async def due(self, dataset: str) -> list[asyncpg.Record]:
        """Pending requests whose label wait is over, with their window start as epoch seconds."""
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "select *, coalesce(extract(epoch from window_start), 0)::float8 window_start_s from requests "
            "where status='pending' and labels_needed <= coalesce((select n from label_count where dataset=$1), 0) "
            "order by created_at", dataset)
        return rows

    async def mark_in_flight(self, request_id: str, request: OutboxEvent, decided: Decided,
                             decided_event: OutboxEvent) -> bool:
        """Move a pending request in flight, put its ``request`` event in the outbox and record the
        "requested" decision, in one transaction; False (and nothing written) when it was no longer pending."""
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval("update requests set status='in_flight' where request_id=$1 "
                                        "and status='pending' returning true", request_id)
            if moved:
                await enqueue(conn, request)
                await record(conn, decided, decided_event)
            return bool(moved)

    async def decisions(self, model: str, limit: int = 50) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "select * from retrain_decisions where model_name=$1 order by at desc limit $2", model, limit)
        return rows

    async def finish(self, request_id: str, ok: bool) -> None:
        await self.pool.execute("update requests set status=$2, finished_at=now() where request_id=$1 "
                                "and status in ('pending', 'in_flight')", request_id, "done" if ok else "failed")

    async def decided(self, result_event_id: str) -> bool:
        return bool(await self.pool.fetchval("select 1 from decisions where result_event_id=$1", result_event_id))

    async def decide(self, result_event_id: str, model: str, version: int, promoted: bool, reason: str) -> None:
        await self.pool.execute("insert into decisions(result_event_id, model_name, version, promoted, reason) "
                                "values ($1,$2,$3,$4,$5) on conflict do nothing",
                                result_event_id, model, version, promoted, reason)
