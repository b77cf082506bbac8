"""Validator: contract rules (unit), and valid vs dead-lettered records as its own process."""

from __future__ import annotations

import json
from collections.abc import Callable

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import DLQ_REASON
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, read_topic
from loopline_validator.domain.contracts import TRANSACTIONS_V1

GOOD = {"event_id": "e1", "customer_id": "c1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
        "country": "NL", "merchant_category": "grocery", "ts": 1795341600}


def test_contract_lists_every_violation() -> None:
    assert TRANSACTIONS_V1.violations(GOOD) == []
    bad = {**GOOD, "amount": -1, "currency": "EURO", "ts": True}
    del bad["customer_id"]
    rules = sorted((f, r) for f, r, _ in TRANSACTIONS_V1.violations(bad))
    assert rules == [("amount", "range"), ("currency", "length"), ("customer_id", "required"), ("ts", "type")]
    assert TRANSACTIONS_V1.violations([1, 2]) == [("", "type", "record must be a JSON object")]


async def test_valid_records_flow_and_invalid_ones_are_dead_lettered(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    services("validator")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    topic = namer.ingested("transactions")
    for i, payload in enumerate([GOOD, {**GOOD, "amount": "lots"}, {**GOOD, "event_id": "e3"}]):
        env = EventIngested(metadata=metadata("test", f"e{i}"), dataset="transactions",
                            content_type="application/json", payload=json.dumps(payload).encode())
        await publisher.publish(topic, env.SerializeToString(), key="c1")
    await publisher.publish(topic, b"\x00\xff not a protobuf", key="c1")
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    valid = await quiet(bootstrap, namer.valid("transactions"), 2)
    assert [EventIngested.FromString(r.value).metadata.event_id for r in valid] == ["e0", "e2"]
    assert valid[0].header("x-loopline-contract") == "transactions/v1"
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 2)
    by_reason = {r.header(DLQ_REASON): r for r in dead}
    wrong_type = by_reason["amount must be a number, got str"]
    assert wrong_type.header("x-loopline-dlq-contract") == "transactions/v1"
    assert wrong_type.header("x-loopline-dlq-field") == "amount"
    assert any((reason or "").startswith("undecodable") for reason in by_reason)
