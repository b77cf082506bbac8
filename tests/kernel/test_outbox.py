"""The transactional outbox against real PostgreSQL and the real broker, broken the ways it breaks:
a publish that fails, two relays at once, a relay killed between the publish and the mark."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import pytest
from loopline_core.db import create_pool, migrate
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.outbox import OutboxEvent, Relay, enqueue, outbox_migration
from loopline_testing.builders import read_fenced
from prometheus_client import REGISTRY

EVENT_ID = "x-loopline-event-id"


@pytest.fixture
async def outbox(pg_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """A schema of this test's own with an outbox table and a ``changes`` table the events report."""
    schema = f"ob_{uuid.uuid4().hex[:10]}"
    pool = await create_pool(pg_dsn, schema)
    from loopline_core.db import Migration  # noqa: PLC0415

    await migrate(pool, schema, [Migration(1, "changes", "create table changes (id text primary key)"),
                                 outbox_migration(2)])
    try:
        yield pool, schema
    finally:
        await pool.close()


async def _until(cond: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def _change(pool: asyncpg.Pool, events: Iterable[OutboxEvent]) -> None:
    """A change and the events that report it, in one transaction (as a service writes them)."""
    async with pool.acquire() as conn, conn.transaction():
        for e in events:
            await conn.execute("insert into changes(id) values ($1) on conflict do nothing", e.event_id)
            await enqueue(conn, e)


def _event(topic: str, key: str, n: int) -> OutboxEvent:
    return OutboxEvent(f"e-{key}-{n}-{uuid.uuid4().hex[:6]}", topic, f"{key}:{n}".encode(), key=key,
                       content_type="text/plain", message_type="test.Event")


async def _pending(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval("select count(*) from outbox where published_at is null")
    return n


def _failures(schema: str) -> float:
    return REGISTRY.get_sample_value("loopline_outbox_failures_total", {"schema": schema, "stage": "publish"}) or 0.0


class _Gate:
    """A publisher that publishes for real, then calls ``after`` (which may block or fail)."""

    def __init__(self, real: Publisher, after: Callable[[], Awaitable[None]]) -> None:
        self.real = real
        self.after = after
        self.count = 0

    async def publish(self, topic: str, value: bytes, **kw: Any) -> None:
        await self.real.publish(topic, value, **kw)
        self.count += 1
        await self.after()


async def test_enqueue_belongs_to_the_callers_transaction_and_is_idempotent(
        outbox: tuple[asyncpg.Pool, str], namer: TopicNamer) -> None:
    pool, _schema = outbox
    e = _event(namer.model_events(), "m", 1)
    with pytest.raises(RuntimeError, match="inside the transaction"):
        async with pool.acquire() as conn:
            await enqueue(conn, e)

    async def change_that_fails() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, e)
            raise ZeroDivisionError  # the change fails: its event must go with it

    with pytest.raises(ZeroDivisionError):
        await change_that_fails()
    assert await pool.fetchval("select count(*) from outbox") == 0
    await _change(pool, [e])
    await _change(pool, [e])  # a retried request derives the same id
    assert await pool.fetchval("select count(*) from outbox") == 1


async def test_the_relay_wakes_on_commit_and_publishes_in_order_with_the_event_id(
        outbox: tuple[asyncpg.Pool, str], namer: TopicNamer, publisher: Publisher, bootstrap: str) -> None:
    pool, schema = outbox
    topic = namer.model_events()
    relay = Relay(pool, schema, publisher, poll_interval_s=3600)  # only a NOTIFY can wake it in time
    await relay.start()
    try:
        first = _event(topic, "a", 0)
        await _change(pool, [first])
        await _until(lambda: _zero(pool))  # from here the relay sleeps until something wakes it
        events = [first] + [_event(topic, k, n) for n in range(4) for k in ("a", "b", "c") if (k, n) != ("a", 0)]
        await _change(pool, events[1:-1])
        await _until(lambda: _zero(pool))  # woken by the commit's NOTIFY (the poll is an hour)
        await _change(pool, events[-1:])
        assert await relay.flush(30), "a writer can wait for its events to be out"
        assert await _pending(pool) == 0
    finally:
        await relay.stop()
    records = await read_fenced(bootstrap, topic)
    assert sorted(r.header(EVENT_ID) or "" for r in records) == sorted(e.event_id for e in events)
    for key in ("a", "b", "c"):
        mine = [r for r in records if r.key == key.encode()]
        assert [r.value for r in mine] == [f"{key}:{n}".encode() for n in range(4)], "one key's events in order"
        assert {r.header("content-type") for r in mine} == {"text/plain"}
        assert {r.header("x-loopline-type") for r in mine} == {"test.Event"}


async def _zero(pool: asyncpg.Pool) -> bool:
    return await _pending(pool) == 0


async def test_a_failed_publish_keeps_the_row_until_a_later_relay_publishes_it_once(
        outbox: tuple[asyncpg.Pool, str], namer: TopicNamer, publisher: Publisher, bootstrap: str) -> None:
    pool, schema = outbox
    topic = namer.training_requests()
    down = Publisher(bootstrap, client_id="test-down")
    await down.start()
    await down.stop()  # a producer whose broker connection is gone: every publish raises
    e = _event(topic, "m", 1)
    await _change(pool, [e])
    before = _failures(schema)
    relay = Relay(pool, schema, down, poll_interval_s=0.05, backoff_s=0.05, max_backoff_s=0.2)
    await relay.start()

    async def failed_twice() -> bool:
        return bool(_failures(schema) >= before + 2 and await pool.fetchval(
            "select attempts >= 2 and last_error is not null from outbox where event_id=$1", e.event_id))

    try:
        await _until(failed_twice)
        assert not await relay.flush(0.5), "a flush gives up while the broker is away; the row stays"
    finally:
        await relay.stop()  # its last pass fails too: it stops anyway
    assert await _pending(pool) == 1, "a row whose publish failed stays pending"
    assert await read_fenced(bootstrap, topic) == []

    relay = Relay(pool, schema, publisher, poll_interval_s=0.05)
    await relay.start()
    try:
        await _until(lambda: _zero(pool))
    finally:
        await relay.stop()
    records = await read_fenced(bootstrap, topic)
    assert [(r.header(EVENT_ID), r.value) for r in records] == [(e.event_id, b"m:1")], "exactly one event"


async def test_two_relays_at_once_send_each_event_once_and_keep_each_keys_order(
        outbox: tuple[asyncpg.Pool, str], namer: TopicNamer, publisher: Publisher, bootstrap: str) -> None:
    pool, schema = outbox
    topic = namer.alerts()
    first_batch = [_event(topic, "a", n) for n in range(10)]
    later_a = [_event(topic, "a", n) for n in range(10, 15)]
    others = [_event(topic, f"b{n % 5}", n) for n in range(25)]
    for e in [*first_batch, *later_a, *others]:
        await _change(pool, [e])

    b_published = asyncio.Event()
    a_holding = asyncio.Event()

    async def hold_until_b_published() -> None:
        a_holding.set()
        await b_published.wait()  # relay A keeps rows 1-10 locked until relay B got work done

    async def note() -> None:
        b_published.set()

    pub_a, pub_b = _Gate(publisher, hold_until_b_published), _Gate(publisher, note)
    relay_a = Relay(pool, schema, pub_a, batch_size=10, poll_interval_s=0.05)
    relay_b = Relay(pool, schema, pub_b, batch_size=10, poll_interval_s=0.05)
    await relay_a.start()
    try:
        async with asyncio.timeout(30):
            await a_holding.wait()
        await relay_b.start()  # must skip A's locked rows, and hold back the later rows of key "a"
        try:
            await _until(lambda: _zero(pool))
        finally:
            await relay_b.stop()
    finally:
        await relay_a.stop()
    records = await read_fenced(bootstrap, topic)
    ids = [r.header(EVENT_ID) for r in records]
    assert len(ids) == len(set(ids)) == 40, "every event once"
    assert pub_a.count > 0 and pub_b.count > 0 and pub_a.count + pub_b.count == 40
    assert [r.header(EVENT_ID) for r in records if r.key == b"a"] == [e.event_id for e in [*first_batch, *later_a]]
    for k in range(5):
        mine = [r.header(EVENT_ID) for r in records if r.key == f"b{k}".encode()]
        assert mine == [e.event_id for e in others if e.key == f"b{k}"]


async def test_a_relay_killed_between_publish_and_mark_republishes_the_same_event(
        outbox: tuple[asyncpg.Pool, str], namer: TopicNamer, publisher: Publisher, bootstrap: str) -> None:
    pool, schema = outbox
    topic = namer.training_results()
    e = _event(topic, "m", 1)
    await _change(pool, [e])
    published = asyncio.Event()

    async def die() -> None:
        published.set()
        await asyncio.Event().wait()  # the process is killed here: acked by the broker, not yet marked

    doomed = Relay(pool, schema, _Gate(publisher, die), poll_interval_s=0.05)
    task = asyncio.create_task(doomed.run())
    async with asyncio.timeout(30):
        await published.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _pending(pool) == 1, "the mark rolled back with the killed relay"
    assert len(await read_fenced(bootstrap, topic)) == 1

    relay = Relay(pool, schema, publisher, poll_interval_s=0.05)
    await relay.start()
    try:
        await _until(lambda: _zero(pool))
    finally:
        await relay.stop()
    records = await read_fenced(bootstrap, topic)
    assert [(r.header(EVENT_ID), r.value) for r in records] == [(e.event_id, b"m:1")] * 2, \
        "published again (at least once), under the same event id for consumers to dedupe"
