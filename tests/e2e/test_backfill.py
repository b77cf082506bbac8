"""The one-command backfill: ingest archives what it accepts; ``loopline replay`` into the raw topic
goes through validator and feature again, duplicates nothing in the feature store while it holds the
events, and refills it to the same rows once it was emptied."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from loopline_cli.app import app
from loopline_core.kafka import Publisher, TopicNamer
from loopline_stack.services import ServiceSet
from loopline_testing.flow import topic_event_ids, transaction, wait_committed
from typer.testing import CliRunner

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DS = "transactions"
N = 40


async def _feature_rows(dsn: str) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The feature store's event rows (what it computes features from) and its online entities."""
    conn = await asyncpg.connect(dsn)
    try:
        events = [tuple(r) for r in await conn.fetch(
            "select view, event_id, entity_id, event_time, numbers, strings, admitted from feature.events "
            "order by view, event_id")]
        online = [r["entity_id"] for r in await conn.fetch("select entity_id from feature.online order by 1")]
    finally:
        await conn.close()
    return events, online


def _replay(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["replay", "--dataset", DS, "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


async def test_replay_into_raw_absorbs_then_refills_the_feature_store(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    prefix, dsn = isolated["LOOPLINE_TOPIC_PREFIX"], isolated["LOOPLINE_POSTGRES_DSN"]
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    env = {**isolated, "LOOPLINE_ARCHIVE_PREFIX": prefix}
    services("ingest", "validator", "feature",
             env={"ingest": {"LOOPLINE_ARCHIVE_PREFIX": prefix, "LOOPLINE_ARCHIVE_LINGER_MS": "1500"}})
    namer = TopicNamer(prefix)
    pipeline = [(namer.group("ingest"), namer.raw(DS)), (namer.group("validator"), namer.ingested(DS)),
                (namer.group("feature"), namer.valid(DS)), (namer.group("ingest-archive"), namer.ingested(DS))]
    start = int(time.time()) - 2 * 3600  # within the view's TTL, spread over three event-time hours
    ids = [f"bf-{i:03d}" for i in range(N)]
    for i, eid in enumerate(ids):
        txn = transaction(eid, i, start + i * 150)
        await publisher.publish(namer.raw(DS), json.dumps(txn).encode(), key=txn["customer_id"],
                                content_type="application/json")
    await wait_committed(bootstrap, pipeline, timeout=120)
    events, online = await _feature_rows(dsn)
    assert sorted({r[1] for r in events}) == ids and len(events) == len({(r[0], r[1]) for r in events})
    assert online, "the online table holds the entities"
    window = ["--from", str(start), "--to", str(start + N * 150)]

    # Replayed while the store holds the events: the valid topic carries them again, the store does not.
    first = await asyncio.to_thread(_replay, env, *window)
    assert first["published"] == N
    await wait_committed(bootstrap, pipeline, timeout=120)
    valid = await topic_event_ids(bootstrap, namer.valid(DS))
    assert sorted(valid) == ids and set(valid.values()) == {2}, valid.most_common(3)
    assert await _feature_rows(dsn) == (events, online), "sinks keyed by event id took nothing twice"

    # Emptied, then one replay: the same rows again.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("delete from feature.events; delete from feature.online")
    finally:
        await conn.close()
    assert await _feature_rows(dsn) == ([], [])
    refill = await asyncio.to_thread(_replay, env, *window)
    assert refill["published"] == N
    await wait_committed(bootstrap, pipeline, timeout=120)
    assert await _feature_rows(dsn) == (events, online), "the backfill restored the feature store"
