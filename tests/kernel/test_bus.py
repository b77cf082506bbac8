"""The Kafka bus against the real broker: batches, commits after the work, dead letters, bounded
retries that pause only their partition, isolation of the record at fault, traces, groups."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loopline_core.errors import ErrorKind, LooplineError, invalid
from loopline_core.kafka import Bus, Item, Publisher, Record, RetryPolicy, TopicNamer, each
from loopline_core.kafka.records import DLQ_ATTEMPTS, DLQ_KIND, DLQ_REASON, DLQ_SOURCE
from loopline_testing.builders import read_topic
from opentelemetry import trace

FAST = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, budget_s=30.0, max_attempts=50)


def _json(record: Record) -> dict[str, Any]:
    value = json.loads(record.value)
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


async def _run(bus: Bus, done: Callable[[], bool], timeout: float = 45.0) -> None:
    await bus.start()
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        await bus.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return {p: (await c.committed(TopicPartition(topic, p))) or 0 for p in range(3)}
    finally:
        await c.stop()


async def _end_offsets(bootstrap: str, topic: str, count: int) -> dict[int, int]:
    """Per partition, the offset after its last record (read, because the local broker's ListOffsets
    answers with the next batch's base offset rather than the next record's offset)."""
    ends = dict.fromkeys(range(3), 0)
    for r in await read_topic(bootstrap, topic, count):
        ends[r.partition] = max(ends[r.partition], r.offset + 1)
    return ends


def _bus(bootstrap: str, namer: TopicNamer, policy: RetryPolicy = FAST) -> Bus:
    return Bus(bootstrap, "test", namer.dead_letter_for, policy)


async def _publish(publisher: Publisher, topic: str, values: list[bytes], keys: Callable[[int], str]) -> None:
    await publisher.publish_batch(topic, [(keys(i), v) for i, v in enumerate(values)],
                                  content_type="application/json")


async def test_batches_commit_once_after_the_work(bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    await _publish(publisher, topic, [json.dumps({"i": i}).encode() for i in range(300)], lambda i: f"k{i % 7}")
    group = f"g-{uuid.uuid4().hex[:6]}"
    batches: list[int] = []
    seen: list[int] = []

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        batches.append(len(items))
        seen.extend(int(i.value["i"]) for i in items)

    bus = _bus(bootstrap, namer)
    bus.subscribe([topic], group, _json, handle, max_records=100)
    await _run(bus, lambda: len(seen) >= 300)
    assert sorted(seen) == list(range(300))
    assert max(batches) > 1, "records arrive in batches, not one by one"
    assert await _committed(bootstrap, group, topic) == await _end_offsets(bootstrap, topic, 300)


async def test_publish_batch_keeps_per_key_order_and_partition(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.ingested("transactions")
    records = [(f"customer-{i % 5}", json.dumps({"i": i}).encode()) for i in range(500)]
    await publisher.publish_batch(topic, records, content_type="application/json")
    single = namer.valid("transactions")
    for key, value in records[:20]:
        await publisher.publish(single, value, key=key, content_type="application/json")
    out = await read_topic(bootstrap, topic, 500)
    by_key: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for r in sorted(out, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key or b"", []).append(json.loads(r.value)["i"])
        partition_of.setdefault(r.key or b"", set()).add(r.partition)
    assert all(v == sorted(v) for v in by_key.values()), "per-key order holds"
    assert all(len(p) == 1 for p in partition_of.values())
    one_by_one = {r.key: r.partition for r in await read_topic(bootstrap, single, 20)}
    assert all(partition_of[k] == {p} for k, p in one_by_one.items() if k), "same partitioner as single sends"


async def test_poison_records_go_to_the_dead_letters_and_the_partition_flows_on(
        bootstrap: str, namer: TopicNamer) -> None:
    topic = namer.raw("transactions")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)  # an outside producer, not our publisher
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"i": 1}', key=b"a", partition=0)
        await producer.send_and_wait(topic, b"\xff\xfe not json", key=b"a", partition=0)
        await producer.send_and_wait(topic, b'{"i": 2}', key=b"a", partition=0, headers=[("odd", b"\xff\x00")])
        await producer.send_and_wait(topic, b"[1, 2]", key=b"a", partition=0)
        await producer.send_and_wait(topic, b'{"i": 3}', key=b"a", partition=0)
    finally:
        await producer.stop()
    seen: list[int] = []

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        seen.extend(int(i.value["i"]) for i in items)

    bus = _bus(bootstrap, namer)
    group = f"g-{uuid.uuid4().hex[:6]}"
    bus.subscribe([topic], group, _json, handle)
    await _run(bus, lambda: len(seen) >= 3)
    assert seen == [1, 2, 3]
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 2)
    assert [d.value for d in dead] == [b"\xff\xfe not json", b"[1, 2]"]
    assert (dead[0].header(DLQ_REASON) or "").startswith("UnicodeDecodeError")
    assert dead[1].header(DLQ_REASON) == "TypeError: not an object"
    assert dead[0].header(DLQ_SOURCE) == f"{topic}/0/1" and dead[0].header(DLQ_ATTEMPTS) == "1"
    assert dead[0].header(DLQ_KIND) == "INVALID_ARGUMENT"
    assert (await _committed(bootstrap, group, topic))[0] == 5


async def test_a_permanent_error_in_a_batch_dead_letters_only_the_record_at_fault(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    await _publish(publisher, topic, [json.dumps({"i": i}).encode() for i in range(50)], lambda _i: "same-key")
    written: list[int] = []

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        for i in items:  # a sink that refuses one value: the whole batch statement fails
            if i.value["i"] == 17:
                raise ValueError("value 17 does not fit the sink")
        written.extend(int(i.value["i"]) for i in items)

    bus = _bus(bootstrap, namer)
    bus.subscribe([topic], f"g-{uuid.uuid4().hex[:6]}", _json, handle)
    await _run(bus, lambda: len(written) >= 49)
    assert sorted(written) == [i for i in range(50) if i != 17]
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 1)
    assert json.loads(dead[0].value) == {"i": 17}
    assert dead[0].header(DLQ_REASON) == "ValueError: value 17 does not fit the sink"


async def test_a_transient_failure_pauses_only_its_partition_and_retries_until_success(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(topic, json.dumps({"i": i, "p": i % 3}).encode(), partition=i % 3)
    finally:
        await producer.stop()
    failures = {"left": 4}
    seen: list[int] = []
    order: list[int] = []

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        if any(i.value["p"] == 0 for i in items) and failures["left"] > 0:
            failures["left"] -= 1
            raise LooplineError(ErrorKind.UNAVAILABLE, "the sink is down")
        seen.extend(int(i.value["i"]) for i in items)
        order.extend(int(i.value["p"]) for i in items)

    bus = _bus(bootstrap, namer)
    group = f"g-{uuid.uuid4().hex[:6]}"
    bus.subscribe([topic], group, _json, handle, max_records=5)
    await _run(bus, lambda: len(seen) >= 30)
    assert sorted(seen) == list(range(30)), "nothing lost, nothing twice"
    assert failures["left"] == 0
    assert order.index(0) > order.index(1), "partition 1 flowed while partition 0 waited"
    assert await _committed(bootstrap, group, topic) == await _end_offsets(bootstrap, topic, 30)
    assert await read_topic(bootstrap, namer.dlq("transactions"), 0, timeout=1) == []


async def test_the_retry_budget_bounds_how_long_a_record_holds_its_partition(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    await _publish(publisher, topic, [json.dumps({"i": i}).encode() for i in range(6)], lambda _i: "one-key")
    seen: list[int] = []

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        if any(i.value["i"] == 2 for i in items):
            raise ConnectionError("this record's call always times out")
        seen.extend(int(i.value["i"]) for i in items)

    bus = _bus(bootstrap, namer, RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, budget_s=1.0,
                                             max_attempts=100))
    bus.subscribe([topic], f"g-{uuid.uuid4().hex[:6]}", _json, handle)
    await _run(bus, lambda: len(seen) >= 5)
    assert sorted(seen) == [0, 1, 3, 4, 5]
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 1)
    assert json.loads(dead[0].value) == {"i": 2} and dead[0].header(DLQ_KIND) == "exhausted"
    assert int(dead[0].header(DLQ_ATTEMPTS) or 0) > 1
    assert "ConnectionError" in (dead[0].header(DLQ_REASON) or "")


async def test_a_per_record_handler_keeps_what_it_did_before_the_failure(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    await _publish(publisher, topic, [json.dumps({"i": i}).encode() for i in range(10)], lambda _i: "k")
    calls: list[int] = []

    async def handler(msg: dict[str, Any], _record: Record) -> None:
        calls.append(int(msg["i"]))
        if msg["i"] == 4:
            raise invalid("four is not allowed")

    bus = _bus(bootstrap, namer)
    bus.subscribe([topic], f"g-{uuid.uuid4().hex[:6]}", _json, each(handler))
    await _run(bus, lambda: len(calls) >= 10)
    assert calls == list(range(10)), "each record handled exactly once, in order"
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 1)
    assert dead[0].header(DLQ_REASON) == "four is not allowed"


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

    bus = _bus(bootstrap, namer)
    bus.subscribe([topic], f"g-{uuid.uuid4().hex[:6]}", _json, each(handler))
    await _run(bus, lambda: bool(seen_trace))
    assert seen_trace == [producer_trace], "a per-record handler runs in the producer's trace"
    finished = spans.get_finished_spans()
    batch_spans = [s for s in finished if s.kind == trace.SpanKind.CONSUMER
                   and any(link.context.trace_id == producer_trace for link in s.links)]
    assert batch_spans, "the batch span links to the producer's trace (FastStream's telemetry middleware)"
    assert "upstream" in {s.name for s in finished if s.context.trace_id == producer_trace}


async def test_two_members_of_a_group_share_the_partitions(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    group = f"g-{uuid.uuid4().hex[:6]}"
    by_member: dict[str, list[int]] = {"a": [], "b": []}

    def handler_for(name: str) -> Callable[[list[Item[dict[str, Any]]]], Awaitable[None]]:
        async def handle(items: list[Item[dict[str, Any]]]) -> None:
            by_member[name].extend(int(i.value["i"]) for i in items)
        return handle

    a, b = _bus(bootstrap, namer), _bus(bootstrap, namer)
    da = a.subscribe([topic], group, _json, handler_for("a"), max_records=2)
    db = b.subscribe([topic], group, _json, handler_for("b"), max_records=2)
    await a.start()
    await b.start()
    try:
        async with asyncio.timeout(60):
            # both joined and the three partitions are split between them: then the work arrives
            while not (da.consumer.assignment() and db.consumer.assignment()
                       and len(da.consumer.assignment() | db.consumer.assignment()) == 3):
                await asyncio.sleep(0.05)
            await _publish(publisher, topic, [json.dumps({"i": i}).encode() for i in range(60)],
                           lambda i: f"customer-{i}")
            while len(set(by_member["a"]) | set(by_member["b"])) < 60:
                await asyncio.sleep(0.05)
    finally:
        await a.stop()
        await b.stop()
    assert sorted(by_member["a"] + by_member["b"]) == list(range(60)), "each record to exactly one member"
    assert by_member["a"] and by_member["b"], "both members got work"


async def test_a_handler_that_hangs_is_cut_off_and_its_record_dead_lettered(
        bootstrap: str, namer: TopicNamer, publisher: Publisher) -> None:
    topic = namer.valid("transactions")
    await _publish(publisher, topic, [json.dumps({"i": i}).encode() for i in range(5)], lambda _i: "one-key")
    seen: list[int] = []

    async def handler(msg: dict[str, Any], _record: Record) -> None:
        if msg["i"] == 1:
            await asyncio.Event().wait()  # a call that never returns
        seen.append(int(msg["i"]))

    bus = _bus(bootstrap, namer, RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, budget_s=0.5,
                                             max_attempts=100, handler_timeout_s=0.5))
    bus.subscribe([topic], f"g-{uuid.uuid4().hex[:6]}", _json, each(handler))
    await _run(bus, lambda: {0, 2, 3, 4} <= set(seen))
    assert 1 not in seen and sorted(set(seen)) == [0, 2, 3, 4]
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 1)
    assert json.loads(dead[0].value) == {"i": 1} and dead[0].header(DLQ_KIND) == "exhausted"
    assert "longer than 0.5s" in (dead[0].header(DLQ_REASON) or "")
