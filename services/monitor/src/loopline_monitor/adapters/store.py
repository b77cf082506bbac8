"""Predictions window, drift history and alert state in Postgres (schema ``monitor``)."""

from __future__ import annotations

import json

import asyncpg
import numpy as np
from loopline_core.db import Migration
from loopline_core.outbox import OutboxEvent, enqueue, outbox_migration

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
"""), outbox_migration(2)]


class MonitorStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, event_id: str, model: str, version: int, inputs: list[float], score: float,
                  latency_ms: float, entity_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "insert into predictions(event_id, model_name, model_version, inputs, score, latency_ms, entity_id) "
            "values ($1,$2,$3,$4,$5,$6,$7) on conflict do nothing returning true",
            event_id, model, version, inputs, score, latency_ms, entity_id))

    async def window(self, model: str, version: int, size: int) -> np.ndarray:
        rows = await self.pool.fetch("select inputs from predictions where model_name=$1 and model_version=$2 "
                                     "order by at desc limit $3", model, version, size)
        return np.asarray([r["inputs"] for r in rows], dtype=np.float64)

    async def state(self, model: str, version: int) -> tuple[str, int, int]:
        """(state, alerts raised, evaluations since the last alert) of a served version."""
        row = await self.pool.fetchrow("select state, alerts, since_alert from alert_state where model_name=$1 and "
                                       "model_version=$2", model, version)
        return (row["state"], row["alerts"], row["since_alert"]) if row else ("ok", 0, 0)

    async def record(self, model: str, version: int, scores: dict[str, float], window: int, state: str,
                     alerts: int, since_alert: int, alert: OutboxEvent | None = None) -> None:
        """Record an evaluation and the alert state it leads to, and the alert it raises (into the
        outbox) in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("insert into drift(model_name, model_version, max_psi, scores, window_size, state) "
                               "values ($1,$2,$3,$4,$5,$6)", model, version, max(scores.values(), default=0.0),
                               json.dumps(scores), window, state)
            await conn.execute("insert into alert_state(model_name, model_version, state, alerts, since_alert) "
                               "values ($1,$2,$3,$4,$5) on conflict (model_name, model_version) do update set "
                               "state=excluded.state, alerts=excluded.alerts, since_alert=excluded.since_alert",
                               model, version, state, alerts, since_alert)
            if alert is not None:
                await enqueue(conn, alert)
