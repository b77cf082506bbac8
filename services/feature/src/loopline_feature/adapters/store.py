"""Offline log, online table and labels in Postgres (schema ``feature``)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import numpy as np
from loopline_core.db import Migration

from loopline_feature.domain.features import History, compute

SCHEMA = "feature"
MIGRATIONS = [Migration(1, "log_online_labels", """
    create table offline_log (
        event_id text primary key, customer_id text not null, event_time timestamptz not null,
        amount double precision not null, features double precision[] not null,
        logged_at timestamptz not null default now());
    create index offline_log_customer_time on offline_log (customer_id, event_time);
    create table online (
        customer_id text primary key, txn_count_24h double precision not null,
        mean_amount_24h double precision not null, event_time timestamptz not null);
    create table labels (
        event_id text primary key, label double precision not null, labelled_at timestamptz not null);
""")]


@dataclass(frozen=True, slots=True)
class Transaction:
    """What the feature view reads from a valid transaction."""

    event_id: str
    customer_id: str
    event_time: float
    amount: float
    merchant_category: str


class FeatureStore:
    def __init__(self, pool: asyncpg.Pool, window_days: float) -> None:
        self.pool = pool
        self.window_s = window_days * 86400.0

    async def history(self, conn: asyncpg.Connection, customer_id: str, before: float) -> History:
        row = await conn.fetchrow(
            "select count(*) n, coalesce(avg(amount), 0) m, coalesce(extract(epoch from max(event_time)), 0) t "
            "from offline_log where customer_id=$1 "
            "and event_time < to_timestamp($2) and event_time >= to_timestamp($2) - make_interval(secs => $3)",
            customer_id, before, self.window_s)
        return History(int(row["n"]), float(row["m"]), float(row["t"]))

    async def record(self, events: list[Transaction]) -> int:
        """Log each event's features (keyed by event id) and refresh its customer's online row, the
        whole batch in one transaction; returns how many were new (a redelivery changes nothing).

        Events are taken in (customer, event time) order, each customer's lock once, so two replicas
        that ever share customers lock them in the same order and cannot deadlock.
        """
        new = 0
        async with self.pool.acquire() as conn, conn.transaction():
            locked: set[str] = set()
            for e in sorted(events, key=lambda e: (e.customer_id, e.event_time, e.event_id)):
                if e.customer_id not in locked:
                    await conn.execute("select pg_advisory_xact_lock(hashtext($1))", f"feature/{e.customer_id}")
                    locked.add(e.customer_id)
                history = await self.history(conn, e.customer_id, e.event_time)
                features = compute(e.amount, e.event_time, e.merchant_category, history)
                inserted = await conn.fetchval(
                    "insert into offline_log(event_id, customer_id, event_time, amount, features) "
                    "values ($1,$2,to_timestamp($3),$4,$5) on conflict do nothing returning true",
                    e.event_id, e.customer_id, e.event_time, e.amount, features)
                if not inserted:
                    continue
                new += 1
                after = await self.history(conn, e.customer_id, e.event_time + 1e-6)
                await conn.execute(
                    "insert into online(customer_id, txn_count_24h, mean_amount_24h, event_time) "
                    "values ($1,$2,$3,to_timestamp($4)) on conflict (customer_id) do update set "
                    "txn_count_24h=excluded.txn_count_24h, mean_amount_24h=excluded.mean_amount_24h, "
                    "event_time=excluded.event_time where online.event_time <= excluded.event_time",
                    e.customer_id, float(after.count), after.mean_amount, e.event_time)
        return new

    async def label(self, labels: list[tuple[str, float, float]]) -> None:
        """Upsert ``(event_id, label, labelled_at)`` rows in one statement (the last label of an id wins)."""
        latest = {event_id: (label, at) for event_id, label, at in labels}
        await self.pool.execute(
            "insert into labels(event_id, label, labelled_at) "
            "select e, l, to_timestamp(t) from unnest($1::text[], $2::float8[], $3::float8[]) as u(e, l, t) "
            "on conflict (event_id) do update set label=excluded.label",
            list(latest), [v[0] for v in latest.values()], [v[1] for v in latest.values()])

    async def online(self, customer_ids: list[str]) -> dict[str, tuple[list[float], float]]:
        rows = await self.pool.fetch("select customer_id, txn_count_24h, mean_amount_24h, "
                                     "extract(epoch from event_time) t from online where customer_id = any($1)",
                                     customer_ids)
        return {r["customer_id"]: ([r["txn_count_24h"], r["mean_amount_24h"]], float(r["t"])) for r in rows}

    async def as_of(self, customer_ids: list[str], t: float) -> dict[str, History]:
        async with self.pool.acquire() as conn:
            return {c: await self.history(conn, c, t) for c in customer_ids}

    async def training_set(self, as_of: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = await self.pool.fetch(
            "select o.features, l.label, extract(epoch from o.event_time) t from offline_log o join labels l "
            "using (event_id) where $1::double precision is null or o.event_time <= to_timestamp($1) "
            "order by o.event_time, o.event_id", as_of)
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0)
        x = np.asarray([r["features"] for r in rows], dtype=np.float32)
        y = np.asarray([r["label"] for r in rows], dtype=np.float32)
        t = np.asarray([r["t"] for r in rows], dtype=np.float64)
        return x, y, t
