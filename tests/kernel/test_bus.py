"""The Kafka bus against the real broker: commit semantics, redelivery, dead letters, traces."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer
from loopline_core.errors import invalid
from loopline_core.kafka import Consumer, Publisher, Record, TopicNamer
from loopline_core.kafka.bus import DLQ_REASON, DLQ_SOURCE
from opentelemetry import trace


def _json_decode(record: Record) -> dict[str, object]:
    import json  # noqa: PLC0415

    value = json.loads(record.value)
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


async def _run_until(consumer: Consumer[object], done: Callable[[], bool], timeout: float = 30.0) -> None:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await task


def _consumer(bootstrap: str, group: str, topic: str, publisher: Publisher, namer: TopicNamer,
              handler: Callable[[object, Record], Awaitable[None]]) -> Consumer[object]:
    return Consumer(bootstrap=bootstrap, group=group, topics=[topic], decode=_json_decode, handler=handler,
                    publisher=publisher, dead_letter_for=namer.dead_letter_for, retry_backoff_s=0.05)


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    from aiokafka import TopicPartition  # noqa: PLC0415

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        total = 0
        for p in range(3):  # the namer fixture creates every topic with 3 partitions
            off = await c.committed(TopicPartition(topic, p))
            total += off or 0
        return total
    finally:
        await c.stop()


async def _read_all(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[Record]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: list[Record] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < count:
                batch = await c.getmany(timeout_ms=200)
                for recs in batch.values():
                    out += [Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in recs]
    finally:
        await c.stop()
    return out


async def test_handler_failure_redelivers_and_commits_only_after_success(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    for i in range(10):
        await publisher.publish(topic, f'{{"i": {i}}}'.encode(), key=f"k{i % 3}", content_type="application/json")
    seen: list[int] = []
    failed_once: set[int] = set()

    async def handler(msg: object, _record: Record) -> None:
        i = int(msg["i"])  # type: ignore[index]
        if i == 4 and i not in failed_once:
            failed_once.add(i)
            raise RuntimeError("transient: database blinked")
        seen.append(i)

    group = f"g-{uuid.uuid4().hex[:6]}"
    await _run_until(_consumer(bootstrap, group, topic, publisher, namer, handler), lambda: len(seen) == 10)
    assert sorted(seen) == list(range(10)), "every record handled exactly once after the retry"
    assert failed_once == {4}
    assert await _committed(bootstrap, group, topic) == 10


async def test_a_crash_before_commit_means_the_next_member_sees_the_record_again(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    await publisher.publish(topic, b'{"i": 1}', key="a", content_type="application/json")
    group = f"g-{uuid.uuid4().hex[:6]}"
    attempts: list[int] = []

    async def always_fails(_msg: object, _record: Record) -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    await _run_until(_consumer(bootstrap, group, topic, publisher, namer, always_fails), lambda: len(attempts) >= 2)
    assert await _committed(bootstrap, group, topic) == 0, "nothing committed past a failing record"

    got: list[object] = []

    async def works(msg: object, _record: Record) -> None:
        got.append(msg)

    await _run_until(_consumer(bootstrap, group, topic, publisher, namer, works), lambda: len(got) == 1)
    assert got == [{"i": 1}]


async def test_undecodable_and_invalid_records_go_to_the_dead_letter_topic_and_consumption_continues(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.ingested("transactions")
    await publisher.publish(topic, b"\xff not json", key="a", content_type="application/json")
    await publisher.publish(topic, b'{"i": -1}', key="a", content_type="application/json")
    await publisher.publish(topic, b'{"i": 2}', key="a", content_type="application/json")
    good: list[object] = []

    async def handler(msg: object, _record: Record) -> None:
        if msg["i"] < 0:  # type: ignore[index]
            raise invalid("i must be >= 0")
        good.append(msg)

    group = f"g-{uuid.uuid4().hex[:6]}"
    await _run_until(_consumer(bootstrap, group, topic, publisher, namer, handler), lambda: len(good) == 1)
    dead = await _read_all(bootstrap, namer.dlq("transactions"), 2)
    reasons = sorted(r.header(DLQ_REASON) or "" for r in dead)
    assert reasons[0] == "i must be >= 0"
    assert reasons[1].startswith("undecodable:")
    assert all((r.header(DLQ_SOURCE) or "").startswith(topic + "/") for r in dead)
    assert {r.value for r in dead} == {b"\xff not json", b'{"i": -1}'}, "the original bytes are kept"
    assert await _committed(bootstrap, group, topic) == 3


async def test_a_trace_started_by_the_producer_continues_in_the_consumer(
        bootstrap: str, namer: TopicNamer, publisher: Publisher, spans) -> None:  # type: ignore[no-untyped-def]
    topic = namer.valid("transactions")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("upstream") as span:
        producer_trace = span.get_span_context().trace_id
        await publisher.publish(topic, b'{"i": 7}', key="a", content_type="application/json")
    seen_trace: list[int] = []

    async def handler(_msg: object, _record: Record) -> None:
        seen_trace.append(trace.get_current_span().get_span_context().trace_id)

    await _run_until(_consumer(bootstrap, f"g-{uuid.uuid4().hex[:6]}", topic, publisher, namer, handler),
                     lambda: bool(seen_trace))
    assert seen_trace == [producer_trace]
    names = {s.name for s in spans.get_finished_spans() if s.context.trace_id == producer_trace}
    assert {"upstream", f"{topic} publish", f"{topic} process"} <= names


async def test_two_members_of_a_group_share_the_partitions(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    for i in range(60):
        await publisher.publish(topic, f'{{"i": {i}}}'.encode(), key=f"customer-{i}", content_type="application/json")
    group = f"g-{uuid.uuid4().hex[:6]}"
    by_member: dict[str, list[int]] = {"a": [], "b": []}

    def handler_for(name: str) -> Callable[[object, Record], Awaitable[None]]:
        async def handler(msg: object, _record: Record) -> None:
            by_member[name].append(int(msg["i"]))  # type: ignore[index]
            await asyncio.sleep(0.02)
        return handler

    a = _consumer(bootstrap, group, topic, publisher, namer, handler_for("a"))
    b = _consumer(bootstrap, group, topic, publisher, namer, handler_for("b"))
    await a.start()
    await b.start()
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        async with asyncio.timeout(60):
            while len(set(by_member["a"]) | set(by_member["b"])) < 60:
                await asyncio.sleep(0.05)
    finally:
        await a.stop()
        await b.stop()
        await asyncio.gather(*tasks)
    assert set(by_member["a"]) | set(by_member["b"]) == set(range(60))
    assert by_member["a"] and by_member["b"], "both members got work"
