"""Ingest as its own process: envelopes, dedupe by event id, dead letters for what is not JSON."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import DLQ_REASON
from loopline_ingest.domain.envelope import wrap_json
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, read_topic
from loopline_testing.flow import committed


def test_generated_ids_are_stable_so_redeliveries_dedupe() -> None:
    raw = b'{"customer_id": "c1", "amount": 3, "ts": "2026-11-22T10:00:00Z"}'
    a, b = wrap_json("transactions", "src", raw, "customer_id"), wrap_json("transactions", "src", raw, "customer_id")
    assert a.event_id == b.event_id and a.entity_id == "c1"
    assert a.event_time == 1795341600.0


async def test_envelopes_dedupes_and_dead_letters(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                                  publisher: Publisher) -> None:
    services("ingest")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    raw = namer.raw("transactions")
    txn = {"event_id": "e-1", "customer_id": "c9", "amount": 10.5, "ts": 1795341600}
    await publisher.publish(raw, json.dumps(txn).encode(), key="c9", content_type="application/json")
    await publisher.publish(raw, json.dumps(txn).encode(), key="c9", content_type="application/json")  # duplicate
    await publisher.publish(raw, b"<xml/>", key="c9", content_type="application/json")
    await publisher.publish(raw, json.dumps({**txn, "event_id": "e-2"}).encode(), key="c9",
                            content_type="application/json")
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    out = await quiet(bootstrap, namer.ingested("transactions"), 2)
    envelopes = [EventIngested.FromString(r.value) for r in out]
    assert sorted(e.metadata.event_id for e in envelopes) == ["e-1", "e-2"], "the duplicate was dropped"
    e = next(e for e in envelopes if e.metadata.event_id == "e-1")
    assert e.dataset == "transactions" and e.content_type == "application/json"
    assert json.loads(e.payload) == txn and e.event_time.seconds == 1795341600
    assert e.ingest_time.seconds > 0 and out[0].key == b"c9"
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 1)
    assert dead[0].value == b"<xml/>" and (dead[0].header(DLQ_REASON) or "").startswith("not JSON")


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` committed on each partition of ``topic`` (0 where it committed none)."""
    return {tp.partition: max(offset, 0) for tp, offset in (await committed(bootstrap, group, topic)).items()}


async def test_sigterm_commits_exactly_what_was_forwarded(isolated: dict[str, str],
                                                          services: Callable[..., ServiceSet],
                                                          publisher: Publisher) -> None:
    """SIGTERM mid-stream: ingest finishes the record in hand, commits it, and stops; a restart
    goes on from there, so every event is forwarded exactly once."""
    svc = services("ingest")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    raw, ingested, group = namer.raw("transactions"), namer.ingested("transactions"), namer.group("ingest")
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    ids = [f"s-{i}" for i in range(1500)]

    async def stream() -> None:
        for start in range(0, len(ids), 20):
            await asyncio.gather(*(publisher.publish(
                raw, json.dumps({"event_id": eid, "customer_id": f"c{i % 10}", "amount": i, "ts": 1795341600})
                .encode(), key=f"c{i % 10}", content_type="application/json")
                for i, eid in enumerate(ids[start:start + 20], start)))

    producing = asyncio.create_task(stream())
    await read_topic(bootstrap, ingested, 100, timeout=60)  # ingest is busy with the stream
    log = svc.running["ingest"].log
    await asyncio.to_thread(svc.stop)  # SIGTERM, then wait for the process to exit
    await producing

    # (a) the group's commits are exactly the records ingest forwarded: none forwarded and left
    # uncommitted (it would be redelivered), none committed and not forwarded (it would be lost)
    by_id = {json.loads(r.value)["event_id"]: (r.partition, r.offset)
             for r in await quiet(bootstrap, raw, 0, wait_s=0)}
    assert sorted(by_id) == sorted(ids)
    forwarded = [EventIngested.FromString(r.value).metadata.event_id
                 for r in await quiet(bootstrap, ingested, 0, wait_s=0)]
    committed = await _committed(bootstrap, group, raw)
    assert 0 < sum(committed.values()) < len(ids), f"SIGTERM came mid-stream: {committed}"
    for partition, upto in committed.items():
        sent = sorted(offset for eid in forwarded for p, offset in [by_id[eid]] if p == partition)
        assert sent == list(range(upto)), f"partition {partition}: committed up to {upto}, forwarded {sent[-3:]}"
    assert '"message": "drained and stopped"' in log.read_text()

    # (b) restarted, ingest goes on from its commits: every event exactly once downstream
    services("ingest")
    out = await quiet(bootstrap, ingested, 0, wait_s=0, settled={group: [raw]})
    counts = Counter(EventIngested.FromString(r.value).metadata.event_id for r in out)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}, counts.most_common(3)
