"""Validator: records against every accepted major of their dataset's contract (unit, with the
handler's decode), and as its own process: valid records stamped with the version they met, the
rest dead-lettered AND described by a ValidationFailed event."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loopline.datasets.v1.transactions_pb2 import Transaction
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline.validator.v1.events_pb2 import ValidationFailed
from loopline_core.contracts import Contracts
from loopline_core.errors import LooplineError
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.records import DLQ_REASON
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, read_topic
from loopline_validator.handlers.ingested import Checked, IngestedHandler, Rejected

ROOT = Path(__file__).resolve().parents[3]
V1 = json.loads((ROOT / "contracts" / "transactions" / "v1.json").read_text())
GOOD = {"event_id": "e1", "customer_id": "c1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
        "country": "NL", "merchant_category": "grocery", "ts": 1795341600}
WINDOW_END = datetime(2031, 1, 1, tzinfo=UTC)


def _doc(major: int, change: Callable[[dict[str, Any]], Any] | None = None, **meta: Any) -> dict[str, Any]:
    doc = copy.deepcopy(V1)
    doc["x-loopline"].update({"version": f"{major}.0", **meta})
    if change is not None:
        change(doc)
    return doc


def _v2(doc: dict[str, Any]) -> None:
    """v2: amounts in integer cents, and a required channel."""
    doc["properties"]["amount"] = {"type": "integer", "minimum": 0}
    doc["properties"]["channel"] = {"type": "string", "enum": ["pos", "web"]}
    doc["required"].append("channel")
    doc["x-loopline"].pop("message_type")


def _contracts(root: Path, *docs: dict[str, Any]) -> Path:
    for doc in docs:
        path = root / "transactions" / f"v{doc['x-loopline']['version'].split('.')[0]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return root


def _envelope(payload: bytes, event_id: str = "e1", content_type: str = "application/json") -> bytes:
    return EventIngested(metadata=metadata("test", event_id), dataset="transactions", content_type=content_type,
                         payload=payload).SerializeToString()


def _record(value: bytes) -> Record:
    return Record("loopline.ingested.transactions", 0, 0, b"c1", value)


def _handler(root: Path, now: datetime) -> IngestedHandler:
    return IngestedHandler(None, TopicNamer(), Contracts.load(root, strict=True), clock=now.timestamp)  # type: ignore[arg-type]


# --- unit: decode --------------------------------------------------------------------------------

def test_a_valid_record_is_stamped_with_the_version_it_met_and_keeps_its_bytes() -> None:
    handler = _handler(ROOT / "contracts", datetime.now(UTC))
    raw = json.dumps({**GOOD, "note": "kept"}).encode()
    out = handler.decode(_record(_envelope(raw)))
    assert isinstance(out, Checked) and out.contract == "transactions/v1"
    msg = EventIngested.FromString(out.envelope)
    assert msg.contract_version == "1.0" and msg.payload == raw and msg.metadata.event_id == "e1"


def test_majors_side_by_side_each_record_stamped_with_the_one_it_met(tmp_path: Path) -> None:
    root = _contracts(tmp_path, _doc(1, accept_until=WINDOW_END.isoformat()), _doc(2, _v2))
    during = _handler(root, WINDOW_END - timedelta(days=1))
    v1_only = json.dumps(GOOD).encode()  # a float amount and no channel: v1 only
    v2_only = json.dumps({**GOOD, "amount": 1250, "channel": "web", "currency": "EUR"}).encode()
    a, b = during.decode(_record(_envelope(v1_only))), during.decode(_record(_envelope(v2_only)))
    assert isinstance(a, Checked) and isinstance(b, Checked)
    assert EventIngested.FromString(a.envelope).contract_version == "1.0" and a.contract == "transactions/v1"
    assert EventIngested.FromString(b.envelope).contract_version == "2.0" and b.contract == "transactions/v2"

    after = _handler(root, WINDOW_END)
    late = after.decode(_record(_envelope(v1_only)))
    assert isinstance(late, Rejected) and late.contract == "transactions/v2" and late.version == "2.0"
    assert sorted((v.field, v.rule) for v in late.violations) == [("amount", "type"), ("channel", "required")]
    assert late.error.details["contract"] == "transactions/v2"
    assert isinstance(after.decode(_record(_envelope(v2_only))), Checked)


def test_unknown_fields_dropped_rewrite_the_payload_and_rejected_ones_are_violations(tmp_path: Path) -> None:
    drop = _handler(_contracts(tmp_path / "drop", _doc(1, unknown_fields="drop")), datetime.now(UTC))
    out = drop.decode(_record(_envelope(json.dumps({**GOOD, "secret": "pii"}).encode())))
    assert isinstance(out, Checked)
    msg = EventIngested.FromString(out.envelope)
    assert json.loads(msg.payload) == GOOD and msg.content_type == "application/json"

    closed = _doc(1, lambda d: d.update({"additionalProperties": False}), unknown_fields="reject")
    reject = _handler(_contracts(tmp_path / "reject", closed), datetime.now(UTC))
    out = reject.decode(_record(_envelope(json.dumps({**GOOD, "secret": "pii"}).encode())))
    assert isinstance(out, Rejected) and [(v.field, v.rule) for v in out.violations] == [("secret", "unknown")]


def test_an_unreadable_envelope_or_an_unknown_dataset_raises_for_the_dead_letters() -> None:
    handler = _handler(ROOT / "contracts", datetime.now(UTC))
    with pytest.raises(LooplineError, match="undecodable"):
        handler.decode(_record(b"\x00\xff not a protobuf"))
    other = EventIngested(metadata=metadata("test", "x"), dataset="payments", payload=b"{}").SerializeToString()
    with pytest.raises(LooplineError, match="no contract for dataset 'payments'"):
        handler.decode(_record(other))


# --- as a process --------------------------------------------------------------------------------

async def test_valid_records_flow_and_each_rejected_one_is_dead_lettered_and_described(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    services("validator")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    topic = namer.ingested("transactions")
    proto_good = Transaction(**{**GOOD, "event_id": "p1"}).SerializeToString()  # type: ignore[arg-type]
    sent = [
        _envelope(json.dumps(GOOD).encode(), "e0"),
        _envelope(json.dumps({**GOOD, "amount": "lots"}).encode(), "e1"),
        _envelope(json.dumps({**GOOD, "event_id": "e3"}).encode(), "e2"),
        _envelope(json.dumps({**GOOD, "amount": -1, "currency": "EURO"}).encode(), "e3"),
        _envelope(proto_good, "p1", "application/x-protobuf"),
        _envelope(b"\xff\xff\xff", "p2", "application/x-protobuf"),
        _envelope(b"{" + b" " * 70_000 + b"}", "big"),
    ]
    for value in sent:  # one key: one partition, so the order below is the order sent
        await publisher.publish(topic, value, key="c1")
    await publisher.publish(topic, b"\x00\xff not a protobuf", key="c1")
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    valid = await quiet(bootstrap, namer.valid("transactions"), 3)
    envelopes = [EventIngested.FromString(r.value) for r in valid]
    assert [e.metadata.event_id for e in envelopes] == ["e0", "e2", "p1"]
    assert {e.contract_version for e in envelopes} == {"1.0"}
    assert {r.header("x-loopline-contract") for r in valid} == {"transactions/v1"}
    assert envelopes[2].payload == proto_good and envelopes[2].content_type == "application/x-protobuf"
    assert {r.key for r in valid} == {b"c1"}

    dead = await read_topic(bootstrap, namer.dlq("transactions"), 5)
    by_reason = {r.header(DLQ_REASON): r for r in dead}
    wrong_type = by_reason["amount must be a number, got string"]
    assert wrong_type.header("x-loopline-dlq-contract") == "transactions/v1"
    assert wrong_type.header("x-loopline-dlq-field") == "amount"
    assert wrong_type.header("x-loopline-dlq-rule") == "type"
    assert any((reason or "").startswith("undecodable: not a loopline.ingest.v1.EventIngested") for reason in by_reason)
    assert any((reason or "").startswith("undecodable: not a loopline.datasets.v1.Transaction")
               for reason in by_reason)
    assert any("over the 65536-byte cap" in (reason or "") for reason in by_reason)

    failed = await quiet(bootstrap, namer.validation_failed("transactions"), 4)
    events = {e.metadata.event_id: e for e in (ValidationFailed.FromString(r.value) for r in failed)}
    assert sorted(events) == ["big", "e1", "e3", "p2"], "one event per rejected record, none for the unreadable"
    assert [(v.field, v.rule) for v in events["e1"].violations] == [("amount", "type")]
    assert sorted((v.field, v.rule) for v in events["e3"].violations) == [("amount", "range"), ("currency", "length")]
    assert events["p2"].violations[0].rule == "decode" and events["big"].violations[0].rule == "size"
    assert {(e.dataset, e.contract_version) for e in events.values()} == {("transactions", "1.0")}


async def test_two_majors_in_their_window_and_the_old_one_after_it(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher,
        tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    open_root = _contracts(tmp_path / "open", _doc(1, accept_until=WINDOW_END.isoformat()), _doc(2, _v2))
    closed_root = _contracts(tmp_path / "closed", _doc(1, accept_until=past.isoformat()), _doc(2, _v2))
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    topic = namer.ingested("transactions")
    v1_only = json.dumps(GOOD).encode()
    v2_only = json.dumps({**GOOD, "amount": 1250, "channel": "pos"}).encode()

    svc = services("validator", env={"validator": {"LOOPLINE_CONTRACTS_DIR": str(open_root)}})
    await publisher.publish(topic, _envelope(v1_only, "a1"), key="c1")
    await publisher.publish(topic, _envelope(v2_only, "a2"), key="c1")
    valid = await quiet(bootstrap, namer.valid("transactions"), 2)
    stamped = {EventIngested.FromString(r.value).metadata.event_id: (EventIngested.FromString(r.value)
                                                                     .contract_version, r.header("x-loopline-contract"))
               for r in valid}
    assert stamped == {"a1": ("1.0", "transactions/v1"), "a2": ("2.0", "transactions/v2")}
    svc.stop()

    services("validator", env={"validator": {"LOOPLINE_CONTRACTS_DIR": str(closed_root)}})
    await publisher.publish(topic, _envelope(v1_only, "b1"), key="c1")
    await publisher.publish(topic, _envelope(v2_only, "b2"), key="c1")
    valid = await quiet(bootstrap, namer.valid("transactions"), 3)
    assert sorted(EventIngested.FromString(r.value).metadata.event_id for r in valid) == ["a1", "a2", "b2"]
    dead = await read_topic(bootstrap, namer.dlq("transactions"), 1)
    assert [r.header("x-loopline-dlq-contract") for r in dead] == ["transactions/v2"]
    failed = await quiet(bootstrap, namer.validation_failed("transactions"), 1)
    event = ValidationFailed.FromString(failed[0].value)
    assert event.metadata.event_id == "b1" and event.contract_version == "2.0"


async def test_a_broken_contract_file_is_refused_and_the_current_one_keeps_serving(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher,
        tmp_path: Path) -> None:
    root = _contracts(tmp_path, _doc(1))
    (root / "transactions" / "v2.json").write_text('{"$schema": "https://json-schema.org/draft/2020-12/schema", ')
    svc = services("validator", env={"validator": {"LOOPLINE_CONTRACTS_DIR": str(root)}})
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    await publisher.publish(namer.ingested("transactions"), _envelope(json.dumps(GOOD).encode(), "k1"), key="c1")
    valid = await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.valid("transactions"), 1)
    assert [r.header("x-loopline-contract") for r in valid] == ["transactions/v1"]
    refused = [line for line in svc.running["validator"].log.read_text().splitlines() if "contract refused" in line]
    assert len(refused) == 1 and "v2.json: not JSON" in refused[0]
