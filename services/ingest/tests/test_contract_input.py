"""Ingest and the validator as processes, fed the way an outside producer would: protobuf input end
to end, what does not decode or is too big in the dead letters, replayed records forwarded again
with their header, and a new dataset that is a contract file plus a line of configuration."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from loopline.datasets.v1.transactions_pb2 import Transaction
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.kafka import Publisher, TopicNamer, ensure_topics
from loopline_core.kafka.records import DLQ_REASON, DLQ_SOURCE, REPLAY
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, read_topic

ROOT = Path(__file__).resolve().parents[3]
T = 1795341600
PROTOBUF = "application/x-protobuf"


def _txn(event_id: str, **change: object) -> Transaction:
    fields: dict[str, object] = {"event_id": event_id, "customer_id": "c1", "merchant_id": "m1", "amount": 12.5,
                                 "currency": "EUR", "country": "NL", "merchant_category": "grocery", "ts": T}
    fields.update(change)
    return Transaction(**{k: v for k, v in fields.items() if v is not None})  # type: ignore[arg-type]


async def test_protobuf_input_end_to_end(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                         publisher: Publisher) -> None:
    services("ingest", "validator")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    raw = namer.raw("transactions")
    good = _txn("p-good").SerializeToString()
    millis = _txn("p-ms", ts=T * 1000.0).SerializeToString()
    await publisher.publish(raw, good, key="c1", content_type=PROTOBUF)
    await publisher.publish(raw, millis, key="c1", content_type=PROTOBUF)
    await publisher.publish(raw, b"\xff\xff\xff\xff", key="c1", content_type=PROTOBUF)
    await publisher.publish(raw, _txn("p-bad", amount=-5.0, currency=None).SerializeToString(), key="c1",
                            content_type=PROTOBUF)
    await publisher.publish(raw, _txn("p-big", device="x" * 70_000).SerializeToString(), key="c1",
                            content_type=PROTOBUF)
    await publisher.publish(raw, json.dumps({"event_id": "j-good", "customer_id": "c1", "merchant_id": "m1",
                                             "amount": 3, "currency": "EUR", "country": "NL",
                                             "merchant_category": "grocery", "ts": T}).encode(), key="c1",
                            content_type="application/json")

    valid = await quiet(bootstrap, namer.valid("transactions"), 3)
    envelopes = {e.metadata.event_id: e for e in (EventIngested.FromString(r.value) for r in valid)}
    assert sorted(envelopes) == ["j-good", "p-good", "p-ms"]
    assert envelopes["p-good"].payload == good and envelopes["p-good"].content_type == PROTOBUF
    assert envelopes["p-ms"].event_time.seconds == T and envelopes["p-good"].event_time.seconds == T
    assert envelopes["j-good"].content_type == "application/json"
    assert {e.contract_version for e in envelopes.values()} == {"1.0"}

    dead = await read_topic(bootstrap, namer.dlq("transactions"), 3)
    reasons = {r.header(DLQ_REASON) or "": r for r in dead}
    undecodable = next(r for reason, r in reasons.items() if reason.startswith("undecodable: not a loopline.datasets"))
    assert undecodable.value == b"\xff\xff\xff\xff" and (undecodable.header(DLQ_SOURCE) or "").startswith(raw)
    big = next(r for reason, r in reasons.items() if "over the 65536-byte cap" in reason)
    assert (big.header(DLQ_SOURCE) or "").startswith(raw)
    contract = next(r for reason, r in reasons.items() if "amount=-5.0 is below 0" in reason)
    assert EventIngested.FromString(contract.value).metadata.event_id == "p-bad"
    assert "currency is required" in (contract.header(DLQ_REASON) or "")


async def test_a_replayed_record_is_forwarded_again_with_its_header(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    services("ingest")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    raw = namer.raw("transactions")
    record = json.dumps({"event_id": "r1", "customer_id": "c1", "amount": 1, "ts": T}).encode()
    await publisher.publish(raw, record, key="c1", content_type="application/json")
    await read_topic(bootstrap, namer.ingested("transactions"), 1)
    await publisher.publish(raw, record, key="c1", content_type="application/json")  # a plain duplicate: dropped
    await publisher.publish(raw, record, key="c1", content_type="application/json",
                            headers=[(REPLAY, "replay-42")])  # a replay: forwarded
    out = await quiet(bootstrap, namer.ingested("transactions"), 2,
                      settled={namer.group("ingest"): [raw]})
    assert [EventIngested.FromString(r.value).metadata.event_id for r in out] == ["r1", "r1"]
    assert [r.header(REPLAY) for r in out] == [None, "replay-42"]
    assert EventIngested.FromString(out[1].value).payload == record


async def test_a_new_dataset_is_a_contract_file_and_a_line_of_configuration(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher, tmp_path: Path) -> None:
    root = tmp_path / "contracts"
    (root / "transactions").mkdir(parents=True)
    (root / "transactions" / "v1.json").write_bytes((ROOT / "contracts" / "transactions" / "v1.json").read_bytes())
    (root / "clicks").mkdir()
    (root / "clicks" / "v1.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": False,
        "required": ["user", "at", "page"],
        "properties": {"click_id": {"type": "string"}, "user": {"type": "string"}, "at": {"type": "string"},
                       "page": {"type": "string", "pattern": "^/"}},
        "x-loopline": {"dataset": "clicks", "version": "1.0", "entity_field": "user",
                       "event_time": {"field": "at", "unit": "iso"}, "event_id_field": "click_id",
                       "unknown_fields": "reject", "max_payload_bytes": 1024}}))
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    await ensure_topics(bootstrap, [namer.raw("clicks"), namer.ingested("clicks"), namer.valid("clicks"),
                                    namer.dlq("clicks"), namer.validation_failed("clicks")])
    env = {"LOOPLINE_CONTRACTS_DIR": str(root), "LOOPLINE_DATASETS": '["transactions", "clicks"]'}
    services("ingest", "validator", env={"ingest": env, "validator": env})
    for click in [{"click_id": "k1", "user": "u1", "at": "2026-11-22T10:00:00Z", "page": "/home"},
                  {"click_id": "k2", "user": "u1", "at": "2026-11-22T10:00:01Z", "page": "home"},
                  {"click_id": "k3", "user": "u1", "at": "2026-11-22T10:00:02Z", "page": "/a", "x": 1}]:
        await publisher.publish(namer.raw("clicks"), json.dumps(click).encode(), key="u1",
                                content_type="application/json")
    valid = await quiet(bootstrap, namer.valid("clicks"), 1)
    [only] = [EventIngested.FromString(r.value) for r in valid]
    assert (only.metadata.event_id, only.dataset, only.event_time.seconds, valid[0].key) == \
        ("k1", "clicks", T, b"u1")
    assert valid[0].header("x-loopline-contract") == "clicks/v1"
    dead = await read_topic(bootstrap, namer.dlq("clicks"), 2)
    assert sorted(r.header("x-loopline-dlq-rule") or "" for r in dead) == ["pattern", "unknown"]
