"""The event log, the online rows and the label log in Postgres (schema ``feature``).

* ``events``: every source event a view has seen, keyed by (view, event id), with the values the view
  reads and whether it was admitted (not later than the allowed lateness on arrival). The offline
  builder computes from it.
* ``online``: per (view, entity) the admitted events of the retention horizon, in time order, the
  entity's watermark (its newest event time) and the horizon (events before it were dropped, so a
  request whose windows reach back past it cannot be answered online). The online path computes from it.
* ``label_log``: labels by (dataset, event id, label time); a correction is a new row, so a training
  set as of T takes, per event, the newest label known by T.

Times are float8 epoch seconds, so both paths see exactly the same instants.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import asyncpg
from loopline_core.db import Migration
from loopline_core.labels import Label

from loopline_feature.domain.training import Row
from loopline_feature.domain.views import Event, FeatureView, Timeline

SCHEMA = "feature"
MIGRATIONS = [
    Migration(1, "log_online_labels", """
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
"""),
    # Feature views: the log keeps source values (not computed features), so late events reach every
    # row they affect and a new view version recomputes from the same events (refill with replay).
    Migration(2, "views_events_label_log", """
    drop table offline_log;
    drop table online;
    create table events (
        view text not null, event_id text not null, entity_id text not null,
        event_time double precision not null, numbers double precision[] not null, strings jsonb not null,
        admitted boolean not null, arrived_at timestamptz not null default clock_timestamp(),
        primary key (view, event_id));
    create index events_entity_time on events (view, entity_id, event_time) where admitted;
    create table online (
        view text not null, entity_id text not null, watermark double precision not null,
        horizon double precision not null, times double precision[] not null,
        numbers double precision[] not null, primary key (view, entity_id));
    create table label_log (
        dataset text not null, event_id text not null, labelled_at double precision not null,
        label double precision not null, received_at timestamptz not null default clock_timestamp(),
        primary key (dataset, event_id, labelled_at));
    insert into label_log(dataset, event_id, labelled_at, label)
        select 'transactions', event_id, extract(epoch from labelled_at), label from labels;
    drop table labels;
"""),
]


class FeatureStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, view: FeatureView, events: Sequence[Event]) -> int:
        """Log each new event (keyed by view and event id) and fold the admitted ones into their
        entities' online rows, the whole batch in one transaction; returns how many were new (a
        redelivery changes nothing).

        Events are taken in batch (arrival) order: an event older than its entity's watermark by more
        than the allowed lateness is logged but admitted nowhere, online or offline. Entities are
        locked in sorted order, so replicas that ever share one cannot deadlock.
        """
        batch: dict[str, Event] = {}
        for e in events:
            batch.setdefault(e.event_id, e)
        entities = sorted({e.entity_id for e in batch.values()})
        width = len(view.numbers)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("select count(pg_advisory_xact_lock(hashtext($1 || '/' || e))) "
                               "from (select unnest($2::text[]) e order by 1) s", view.ref, entities)
            logged = {r["event_id"] for r in await conn.fetch(
                "select event_id from events where view = $1 and event_id = any($2::text[])", view.ref, list(batch))}
            new = [e for e in batch.values() if e.event_id not in logged]
            if not new:
                return 0
            state: dict[str, tuple[float | None, Timeline]] = {}
            horizon: dict[str, float] = {}
            for r in await conn.fetch("select entity_id, watermark, horizon, times, numbers from online "
                                      "where view = $1 and entity_id = any($2::text[])", view.ref, entities):
                state[r["entity_id"]] = (r["watermark"], Timeline.ordered(list(r["times"]), list(r["numbers"]), width))
                horizon[r["entity_id"]] = r["horizon"]
            admitted = []
            touched: set[str] = set()
            for e in new:
                watermark, timeline = state.get(e.entity_id) or (None, Timeline(width=width))
                ok = view.admits(watermark, e.event_time)
                admitted.append(ok)
                if ok:
                    timeline.add(e.event_time, e.numbers)
                    watermark = e.event_time if watermark is None else max(watermark, e.event_time)
                    touched.add(e.entity_id)
                state[e.entity_id] = (watermark, timeline)
            await conn.executemany(
                "insert into events(view, event_id, entity_id, event_time, numbers, strings, admitted) "
                "values ($1, $2, $3, $4, $5, $6::jsonb, $7) on conflict do nothing",
                [(view.ref, e.event_id, e.entity_id, e.event_time, list(e.numbers), json.dumps(e.strings), ok)
                 for e, ok in zip(new, admitted, strict=True)])
            rows = []
            for entity in sorted(touched):
                watermark, timeline = state[entity]
                assert watermark is not None
                bound = horizon.get(entity, -math.inf)
                if timeline.trim(watermark - view.retention_s):
                    bound = max(bound, watermark - view.retention_s)
                rows.append((view.ref, entity, watermark, bound, timeline.times, timeline.flat()))
            await conn.executemany(
                "insert into online(view, entity_id, watermark, horizon, times, numbers) "
                "values ($1, $2, $3, $4, $5, $6) on conflict (view, entity_id) do update set "
                "watermark = excluded.watermark, horizon = excluded.horizon, times = excluded.times, "
                "numbers = excluded.numbers", rows)
        return len(new)

    async def online(self, view: FeatureView, entity_ids: Sequence[str]) -> dict[str, tuple[Timeline, float]]:
        """The online timelines of some entities and their horizons (absent: no admitted event yet)."""
        width = len(view.numbers)
        rows = await self.pool.fetch("select entity_id, horizon, times, numbers from online "
                                     "where view = $1 and entity_id = any($2::text[])", view.ref, entity_ids)
        return {r["entity_id"]: (Timeline.ordered(r["times"], r["numbers"], width), r["horizon"]) for r in rows}

    async def label(self, labels: Sequence[Label]) -> None:
        """Record labels by (dataset, event id, label time) in one statement; a redelivery overwrites
        its own row with the same value, a correction (a later label time) adds one."""
        await self.pool.executemany(
            "insert into label_log(dataset, event_id, labelled_at, label) values ($1, $2, $3, $4) "
            "on conflict (dataset, event_id, labelled_at) do update set label = excluded.label",
            [(lb.dataset, lb.event_id, lb.labelled_at, lb.value) for lb in labels])

    async def labelled(self, view: FeatureView, as_of: float, recorded_by: float = math.inf,
                       recorded_since: float = 0.0) -> list[Row]:
        """The view's events at or before ``as_of`` that carry a label known at ``as_of`` (by label
        time), each with the newest such label; in event-time order. Events and labels that reached the
        store after ``recorded_by`` (system time) are left out, so a rebuild with the same pair selects
        the same rows however late some data arrived since (a redelivered training request trains on
        the same set); events that arrived before ``recorded_since`` are left out too (a retrain from a
        drift's onset)."""
        rows = await self.pool.fetch(
            "with known as (select distinct on (event_id) event_id, label, labelled_at from label_log "
            "  where dataset = $2 and labelled_at <= $3 and received_at <= to_timestamp($4) "
            "  order by event_id, labelled_at desc) "
            "select e.event_id, e.entity_id, e.event_time, e.numbers, e.strings, k.label, k.labelled_at "
            "from known k join events e on e.view = $1 and e.event_id = k.event_id "
            "where e.event_time <= $3 and e.arrived_at <= to_timestamp($4) and e.arrived_at >= to_timestamp($5) "
            "order by e.event_time, e.event_id",
            view.ref, view.source, as_of, recorded_by, recorded_since)
        return [Row(r["event_id"], r["entity_id"], r["event_time"], r["labelled_at"], r["label"], tuple(r["numbers"]),
                    tuple(json.loads(r["strings"]))) for r in rows]

    async def history(self, view: FeatureView, entity_ids: Sequence[str], lo: float, hi: float,
                      recorded_by: float = math.inf) -> dict[str, Timeline]:
        """Every admitted event of some entities with event time in ``[lo, hi)`` that reached the store
        by ``recorded_by``, as timelines."""
        width = len(view.numbers)
        found: dict[str, tuple[list[float], list[list[float]]]] = {}
        for r in await self.pool.fetch(
                "select entity_id, event_time, numbers from events where view = $1 and admitted "
                "and entity_id = any($2::text[]) and event_time >= $3 and event_time < $4 "
                "and arrived_at <= to_timestamp($5)",
                view.ref, entity_ids, lo, hi, recorded_by):
            times, columns = found.setdefault(r["entity_id"], ([], [[] for _ in range(width)]))
            times.append(r["event_time"])
            for column, value in zip(columns, r["numbers"], strict=True):
                column.append(value)
        return {e: Timeline(times, columns, width) for e, (times, columns) in found.items()}
