"""Ingest as its own process: envelopes, dedupe by event id, dead letters for what is not JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import DLQ_REASON
from loopline_ingest.domain.envelope import wrap_json
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, read_topic


def test_generated_ids_are_stable_so_redeliveries_dedupe() -> None:
    raw = b'{"customer_id": "c1", "amount": 3, "ts": "2026-11-22T10:00:00Z"}'
    a, b = wrap_json("transactions", "src", raw, "customer_id"), wrap_json("transactions", "src", raw, "customer_id")
    assert a.event_id == b.event_id and a.entity_id == "c1"
    assert a.event_time == 1795341600.0


async def test_envelopes_dedupes_and_dead_letters(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                                  publisher: Publisher) -> None:
    svc = services("ingest")
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

    # SIGTERM: the service finishes, commits, leaves its group and says so
    log = svc.running["ingest"].log
    svc.stop()
    assert '"message": "drained and stopped"' in log.read_text()
