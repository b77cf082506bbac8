"""The monitor's state in Postgres (schema ``monitor``).

``predictions`` is the log the windows are rebuilt from after a restart (one row per prediction
event id, so a redelivered prediction is never counted twice); ``labels`` holds labels until the
prediction they label arrives (joined by the upstream event id, the prediction's request id);
``windows`` and ``alert_state`` keep what each evaluation decided, written in the same
transaction as the events it publishes (through the outbox).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg
from loopline_core.db import Migration
from loopline_core.outbox import OutboxEvent, enqueue, outbox_migration

from loopline_monitor.adapters.llm_store import LLM_MIGRATION
from loopline_monitor.domain.windows import Row

SCHEMA = "monitor"
MIGRATIONS = [Migration(1, "predictions_drift_alerts", """
    create table predictions (
        event_id text primary key, model_name text not null, model_version int not null,
        inputs double precision[] not null, score double precision not null, latency_ms double precision not null,
        entity_id text not null, at timestamptz not null default now());
    create index predictions_model_version_at on predictions (model_name, model_version, at desc);
    create table drift (
        id bigserial primary key, model_name text not null, model_version int not null,
        at timestamptz not null default now(), max_psi double precision not null, scores jsonb not null,
        window_size int not null, state text not null);
    create table alert_state (
        model_name text not null, model_version int not null, state text not null, alerts int not null,
        since_alert int not null default 0, primary key (model_name, model_version));
"""), outbox_migration(2), Migration(3, "incremental_windows_labels_episodes", """
    drop table predictions; drop table drift; drop table alert_state;
    create sequence label_seq;
    create table predictions (
        seq bigserial primary key, event_id text not null unique, request_id text not null,
        model_name text not null, model_version int not null, variant text not null, role text not null,
        shadow boolean not null, inputs double precision[] not null, score double precision not null,
        latency_ms double precision not null, failed boolean not null, out_of_range boolean not null,
        at double precision not null, label double precision, labelled_at double precision, label_seq bigint);
    create index predictions_version_seq on predictions (model_name, model_version, seq);
    create index predictions_request on predictions (request_id) where label is null;
    create index predictions_labelled on predictions (model_name, model_version, label_seq) where label_seq is not null;
    create table labels (
        event_id text primary key, value double precision not null, labelled_at double precision not null,
        received_at timestamptz not null default now(), joined boolean not null default false,
        dead boolean not null default false, raw bytea not null, key bytea, topic text not null);
    create index labels_waiting on labels (received_at) where not joined and not dead;
    create table windows (
        model_name text not null, model_version int not null, spec text not null, evaluated_seq bigint not null,
        next_end double precision, evaluations bigint not null default 0,
        primary key (model_name, model_version, spec));
    create table alert_state (
        model_name text not null, model_version int not null, kind text not null, state jsonb not null,
        primary key (model_name, model_version, kind));
    create table evaluations (
        id bigserial primary key, model_name text not null, model_version int not null, spec text not null,
        variant text not null, at timestamptz not null default now(), summary jsonb not null);
"""), LLM_MIGRATION]

# column lists spliced into queries below: constants, never input (hence the S608 waivers)
_ROW = "seq, at, inputs, score, latency_ms, failed, out_of_range"
_JOINED = "p.model_name, p.model_version, p.variant, p.shadow, p.score, p.at, p.label, p.labelled_at"


@dataclass(frozen=True)
class NewPrediction:
    event_id: str
    request_id: str
    model: str
    version: int
    variant: str
    role: str
    shadow: bool
    inputs: list[float]
    score: float
    latency_ms: float
    failed: bool
    out_of_range: bool
    at: float


@dataclass(frozen=True)
class Joined:
    """A labelled prediction."""

    model: str
    version: int
    variant: str
    shadow: bool
    score: float
    at: float
    label: float
    labelled_at: float


def _row(r: asyncpg.Record) -> Row:
    return Row(r["seq"], r["at"], tuple(r["inputs"]), r["score"], r["latency_ms"], r["failed"], r["out_of_range"])


def _joined(r: asyncpg.Record) -> Joined:
    return Joined(r["model_name"], r["model_version"], r["variant"], r["shadow"], r["score"], r["at"], r["label"],
                  r["labelled_at"])


class MonitorStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, rows: list[NewPrediction]) -> tuple[list[tuple[NewPrediction, int]], list[Joined]]:
        """Insert predictions (a repeat of an event id changes nothing) and join the labels that came first.
        Returns the rows that were new, with their sequence numbers, and the labelled predictions."""
        if not rows:
            return [], []
        cols = list(zip(*[(p.event_id, p.request_id, p.model, p.version, p.variant, p.role, p.shadow,
                           "{" + ",".join(repr(float(v)) for v in p.inputs) + "}", p.score, p.latency_ms, p.failed,
                           p.out_of_range, p.at) for p in rows], strict=True))
        async with self.pool.acquire() as conn, conn.transaction():
            added = await conn.fetch(
                "insert into predictions(event_id, request_id, model_name, model_version, variant, role, shadow, "
                "inputs, score, latency_ms, failed, out_of_range, at) "
                "select e, r, m, v, va, ro, sh, i::float8[], s, l, f, o, a "
                "from unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bool[], "
                "$8::text[], $9::float8[], $10::float8[], $11::bool[], $12::bool[], $13::float8[]) "
                "as t(e, r, m, v, va, ro, sh, i, s, l, f, o, a) "
                "on conflict (event_id) do nothing returning seq, event_id", *[list(c) for c in cols])
            seqs = {r["event_id"]: r["seq"] for r in added}
            joined = await conn.fetch(
                f"update predictions p set label = l.value, labelled_at = l.labelled_at, "  # noqa: S608
                f"label_seq = nextval('label_seq') from labels l where l.event_id = p.request_id "
                f"and p.seq = any($1::bigint[]) and p.label is null and not p.failed returning {_JOINED}",
                list(seqs.values()))
            if joined:
                await conn.execute("update labels set joined = true where event_id in "
                                   "(select request_id from predictions where seq = any($1::bigint[])) "
                                   "and not joined", list(seqs.values()))
        return [(p, seqs[p.event_id]) for p in rows if p.event_id in seqs], [_joined(r) for r in joined]

    async def add_label(self, event_id: str, value: float, labelled_at: float, raw: bytes, key: bytes | None,
                        topic: str) -> list[Joined] | None:
        """Keep a label and join it to the predictions it labels. None: a repeat (handled before)."""
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval(
                "insert into labels(event_id, value, labelled_at, raw, key, topic) values ($1,$2,$3,$4,$5,$6) "
                "on conflict do nothing returning true", event_id, value, labelled_at, raw, key, topic)
            if not new:
                return None
            joined = await conn.fetch(
                f"update predictions p set label = $2, labelled_at = $3, label_seq = nextval('label_seq') "  # noqa: S608
                f"where p.request_id = $1 and p.label is null and not p.failed returning {_JOINED}",
                event_id, value, labelled_at)
            if joined:
                await conn.execute("update labels set joined = true where event_id = $1", event_id)
        return [_joined(r) for r in joined]

    async def expired_labels(self, ttl_s: float, limit: int = 500) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(
            "select event_id, raw, key, topic, labelled_at from labels where not joined and not dead "
            "and received_at < now() - make_interval(secs => $1) order by received_at limit $2", ttl_s, limit))

    async def mark_dead(self, event_ids: list[str]) -> None:
        await self.pool.execute("update labels set dead = true where event_id = any($1::text[])", event_ids)

    async def window_rows(self, model: str, version: int, last: int, since_at: float | None) -> list[Row]:
        """Oldest first: the last ``last`` rows of a version, or those at or after ``since_at``."""
        if since_at is not None:
            rows = await self.pool.fetch(f"select {_ROW} from predictions where model_name=$1 "  # noqa: S608
                                         f"and model_version=$2 and at >= $3 order by seq", model, version, since_at)
        else:
            rows = await self.pool.fetch(f"select {_ROW} from predictions where model_name=$1 "  # noqa: S608
                                         f"and model_version=$2 order by seq desc limit $3", model, version, last)
            rows = list(reversed(rows))
        return [_row(r) for r in rows]

    async def labelled(self, model: str, version: int, last: int) -> list[Joined]:
        """The newest ``last`` labelled predictions of a version, oldest first."""
        rows = await self.pool.fetch(f"select {_JOINED} from predictions p where model_name=$1 "  # noqa: S608
                                     f"and model_version=$2 and label_seq is not null order by label_seq desc limit $3",
                                     model, version, last)
        return [_joined(r) for r in reversed(rows)]

    async def predicted(self, model: str, version: int) -> int:
        return int(await self.pool.fetchval("select count(*) from predictions where model_name=$1 and "
                                            "model_version=$2 and not failed", model, version))

    async def windows(self, model: str, version: int) -> dict[str, tuple[int, float | None, int]]:
        """spec -> (evaluated_seq, next_end, evaluations) of a version's windows."""
        rows = await self.pool.fetch("select spec, evaluated_seq, next_end, evaluations from windows "
                                     "where model_name=$1 and model_version=$2", model, version)
        return {r["spec"]: (r["evaluated_seq"], r["next_end"], r["evaluations"]) for r in rows}

    async def alert_states(self, model: str, version: int) -> dict[str, dict[str, Any]]:
        rows = await self.pool.fetch("select kind, state from alert_state where model_name=$1 and model_version=$2",
                                     model, version)
        return {r["kind"]: json.loads(r["state"]) for r in rows}

    async def record(self, model: str, version: int, spec: str, variant: str, summary: dict[str, Any],
                     window: tuple[int, float | None, int] | None, states: dict[str, dict[str, Any]],
                     events: list[OutboxEvent]) -> None:
        """One evaluation: its summary, the window's marks, the alert states and the events they publish,
        in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("insert into evaluations(model_name, model_version, spec, variant, summary) "
                               "values ($1,$2,$3,$4,$5)", model, version, spec, variant, json.dumps(summary))
            if window is not None:
                await conn.execute(
                    "insert into windows(model_name, model_version, spec, evaluated_seq, next_end, evaluations) "
                    "values ($1,$2,$3,$4,$5,$6) on conflict (model_name, model_version, spec) do update set "
                    "evaluated_seq=excluded.evaluated_seq, next_end=excluded.next_end, "
                    "evaluations=excluded.evaluations", model, version, spec, *window)
            for kind, state in states.items():
                await conn.execute(
                    "insert into alert_state(model_name, model_version, kind, state) values ($1,$2,$3,$4) "
                    "on conflict (model_name, model_version, kind) do update set state=excluded.state",
                    model, version, kind, json.dumps(state))
            for e in events:
                await enqueue(conn, e)
