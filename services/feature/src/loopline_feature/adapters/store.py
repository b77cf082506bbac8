"""Offline log, online table and labels in Postgres (schema ``feature``)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import numpy as np
from loopline_core.db import Migration

from loopline_feature.domain.features import History, Timeline, compute

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
        """Log each new event's features (keyed by event id) and refresh its customer's online row, the
        whole batch in one transaction and a handful of statements; returns how many were new (a
        redelivery changes nothing).

        Each event's features see only the customer's transactions strictly before it (already logged
        or earlier in this batch), so the result is the same as logging the events one by one in time
        order. Customers are locked in sorted order, so replicas that ever share one cannot deadlock.
        """
        # Postgres keeps microseconds: compare times as it will store them.
        batch = {e.event_id: Transaction(e.event_id, e.customer_id, round(e.event_time, 6), e.amount,
                                         e.merchant_category) for e in reversed(events)}
        async with self.pool.acquire() as conn, conn.transaction():
            customers = sorted({e.customer_id for e in batch.values()})
            await conn.execute("select count(pg_advisory_xact_lock(hashtext('feature/' || c))) "
                               "from (select unnest($1::text[]) c order by 1) s", customers)
            logged = {r["event_id"] for r in await conn.fetch(
                "select event_id from offline_log where event_id = any($1::text[])", list(batch))}
            new = [e for e in batch.values() if e.event_id not in logged]
            if not new:
                return 0
            lo = min(e.event_time for e in new) - self.window_s
            hi = max(e.event_time for e in new) + 1e-6
            rows: dict[str, list[tuple[float, float]]] = {c: [] for c in customers}
            for r in await conn.fetch(
                    "select customer_id, extract(epoch from event_time)::float8 t, amount from offline_log "
                    "where customer_id = any($1::text[]) and event_time >= to_timestamp($2) "
                    "and event_time < to_timestamp($3)", customers, lo, hi):
                rows[r["customer_id"]].append((r["t"], r["amount"]))
            for e in new:
                rows[e.customer_id].append((e.event_time, e.amount))
            timelines = {c: Timeline(r) for c, r in rows.items()}
            features = [compute(e.amount, e.event_time, e.merchant_category,
                                timelines[e.customer_id].before(e.event_time, self.window_s)) for e in new]
            await conn.execute(
                "insert into offline_log(event_id, customer_id, event_time, amount, features) "
                "select e, c, to_timestamp(t), a, f::float8[] "
                "from unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::text[]) as u(e, c, t, a, f) "
                "on conflict do nothing",
                [e.event_id for e in new], [e.customer_id for e in new], [e.event_time for e in new],
                [e.amount for e in new], ["{" + ",".join(map(repr, f)) + "}" for f in features])
            latest: dict[str, Transaction] = {}
            for e in new:
                if e.customer_id not in latest or e.event_time >= latest[e.customer_id].event_time:
                    latest[e.customer_id] = e
            after = {c: timelines[c].before(e.event_time + 1e-6, self.window_s) for c, e in latest.items()}
            await conn.execute(
                "insert into online(customer_id, txn_count_24h, mean_amount_24h, event_time) "
                "select c, n, m, to_timestamp(t) from unnest($1::text[], $2::float8[], $3::float8[], $4::float8[]) "
                "as u(c, n, m, t) on conflict (customer_id) do update set "
                "txn_count_24h=excluded.txn_count_24h, mean_amount_24h=excluded.mean_amount_24h, "
                "event_time=excluded.event_time where online.event_time <= excluded.event_time",
                list(latest), [float(after[c].count) for c in latest], [after[c].mean_amount for c in latest],
                [latest[c].event_time for c in latest])
        return len(new)

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
