"""Rollouts and their observations in Postgres (schema ``retrainer``).

Each prediction row is one observation keyed by (rollout, row event id, arm), inserted ``on
conflict do nothing``, so a redelivered row is counted once; the counts are aggregates over those
rows, never counters bumped in place. A label is kept by the event id it labels and joined to
observations from either side (a label may arrive before the row it labels: the topics are
consumed apart), so each observation gets its label once, whichever came first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from loopline_core.db import Migration
from loopline_core.outbox import OutboxEvent, enqueue

from loopline_retrainer.domain.rollout import Counts

MIGRATION = Migration(3, "rollouts", """
    create table rollouts (
        rollout_id text primary key, model_name text not null, champion_version int not null,
        challenger_version int not null, mode text not null, policy jsonb not null,
        started_at timestamptz not null default now(), status text not null default 'running',
        decided_at timestamptz, reason text not null default '');
    create unique index rollouts_running on rollouts (model_name) where status = 'running';
    create table observations (
        rollout_id text not null references rollouts, row_id text not null, arm text not null,
        join_key text not null, failed boolean not null, breach boolean not null, score real,
        label real, primary key (rollout_id, row_id, arm));
    create index observations_join on observations (join_key) where label is null;
    create table rollout_labels (
        event_id text primary key, value real not null, at timestamptz not null default now());
""")


@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    model_name: str
    champion_version: int
    challenger_version: int
    mode: str
    policy: dict[str, Any]
    elapsed_s: float
    status: str


@dataclass(frozen=True)
class Observation:
    row_id: str
    arm: str
    join_key: str
    failed: bool
    breach: bool
    score: float | None


def _rollout(row: asyncpg.Record) -> Rollout:
    return Rollout(row["rollout_id"], row["model_name"], row["champion_version"], row["challenger_version"],
                   row["mode"], json.loads(row["policy"]), float(row["elapsed_s"]), row["status"])


_SELECT = "select *, extract(epoch from coalesce(decided_at, now()) - started_at) elapsed_s from rollouts "


class RolloutStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def start(self, rollout: Rollout, event: OutboxEvent,
                    superseded: Callable[[Rollout], OutboxEvent]) -> tuple[bool, list[Rollout]]:
        """Record a running rollout and its "started" event; a running one of the same model is closed
        first with its ``superseded`` event (the challenger alias names the new one now), and returned.
        (False, []) when this rollout is known already (a redelivered result)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(hashtext($1))", f"rollout/{rollout.model_name}")
            if await conn.fetchval("select 1 from rollouts where rollout_id=$1", rollout.rollout_id):
                return False, []
            rows = await conn.fetch(_SELECT + "where model_name=$1 and status='running'", rollout.model_name)
            await conn.execute("update rollouts set status='superseded', decided_at=now(), reason=$2 "
                               "where model_name=$1 and status='running'", rollout.model_name,
                               f"superseded by v{rollout.challenger_version}")
            await conn.execute(
                "insert into rollouts(rollout_id, model_name, champion_version, challenger_version, mode, policy) "
                "values ($1,$2,$3,$4,$5,$6)", rollout.rollout_id, rollout.model_name, rollout.champion_version,
                rollout.challenger_version, rollout.mode, json.dumps(rollout.policy))
            old = [_rollout(r) for r in rows]
            for r in old:
                await enqueue(conn, superseded(r))
            await enqueue(conn, event)
            return True, old

    async def running(self, model: str | None = None) -> list[Rollout]:
        rows = await self.pool.fetch(_SELECT + "where status='running' and ($1::text is null or model_name=$1) "
                                     "order by started_at", model)
        return [_rollout(r) for r in rows]

    async def latest(self, model: str) -> Rollout | None:
        row = await self.pool.fetchrow(_SELECT + "where model_name=$1 order by started_at desc limit 1", model)
        return _rollout(row) if row else None

    async def observe(self, rollout_id: str, rows: list[Observation]) -> int:
        """Add observations (a repeat changes nothing), each with its label if that came first; how many
        were new."""
        if not rows:
            return 0
        result = await self.pool.execute(
            "insert into observations(rollout_id, row_id, arm, join_key, failed, breach, score, label) "
            "select $1, r.row_id, r.arm, r.join_key, r.failed, r.breach, r.score, l.value "
            "from unnest($2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[], $7::real[]) "
            "  as r(row_id, arm, join_key, failed, breach, score) "
            "left join rollout_labels l on l.event_id = r.join_key "
            "on conflict do nothing", rollout_id, [r.row_id for r in rows], [r.arm for r in rows],
            [r.join_key for r in rows], [r.failed for r in rows], [r.breach for r in rows],
            [r.score for r in rows])
        return int(result.split()[-1])

    async def label(self, event_id: str, value: float) -> int:
        """Keep a label for rollouts to join and give it to the observations waiting for it; how many got it."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("insert into rollout_labels(event_id, value) values ($1,$2) on conflict do nothing",
                               event_id, value)
            result = await conn.execute("update observations set label=$2 where join_key=$1 and label is null",
                                        event_id, value)
            return int(result.split()[-1])

    async def counts(self, rollout_id: str, threshold: float) -> dict[str, Counts]:
        """Per arm: rows, failed rows, breaches, labelled rows that scored, and those whose score at
        ``threshold`` disagrees with the label (a label >= 0.5 is the positive class)."""
        rows = await self.pool.fetch(
            "select arm, count(*) n, count(*) filter (where failed) failed, count(*) filter (where breach) breach, "
            "count(*) filter (where label is not null and score is not null) labelled, "
            "count(*) filter (where label is not null and score is not null and (score >= $2) <> (label >= 0.5)) "
            "wrong from observations where rollout_id=$1 group by arm", rollout_id, threshold)
        return {r["arm"]: Counts(r["n"], r["failed"], r["breach"], r["labelled"], r["wrong"]) for r in rows}

    async def close(self, rollout_id: str, status: str, reason: str, event: OutboxEvent) -> bool:
        """Mark a running rollout decided with its event, in one transaction; False when it was decided already."""
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval("update rollouts set status=$2, decided_at=now(), reason=$3 "
                                        "where rollout_id=$1 and status='running' returning true",
                                        rollout_id, status, reason)
            if moved:
                await enqueue(conn, event)
                # labels are kept only for running rollouts to join
                await conn.execute("delete from rollout_labels where not exists "
                                   "(select 1 from rollouts where status='running')")
            return bool(moved)
