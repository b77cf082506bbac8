"""Input rules of ingest, as an outside producer meets them (pure: no servers): the default rules and a
dataset's contract (field names, event-time unit, JSON or protobuf, the payload cap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopline.datasets.v1.transactions_pb2 import Transaction
from loopline_core.contracts import Contracts
from loopline_core.errors import LooplineError
from loopline_ingest.domain.envelope import parse_time, wrap, wrap_json

ROOT = Path(__file__).resolve().parents[3]

T = 1763800005  # 2025-11-22T08:26:45Z


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (T, None, T), (T + 0.25, None, T + 0.25), (T * 1000, None, T), (T * 1000 + 500, None, T + 0.5),
    (T * 1000, "ms", T), (T, "s", T), ("2025-11-22T08:26:45Z", None, T),
    ("2025-11-22T09:26:45+01:00", None, T), (0, None, 0.0),
])
def test_timestamps_in_seconds_milliseconds_or_zoned_iso(value: object, unit: str | None, expected: float) -> None:
    assert parse_time(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize(("value", "unit", "reason"), [
    ("2025-11-22T08:26:45", None, "no zone"), (1e300, None, "outside"), (float("nan"), None, "finite"),
    (float("inf"), None, "finite"), (-5, None, "outside"), (True, None, "must be a number"),
    ("yesterday", None, "not ISO-8601"), (None, None, "must be a number"), ([T], None, "must be a number"),
    (T * 1000, "s", "outside"), (T, "minutes", "must be s or ms"), (9e18, None, "outside"),
])
def test_absurd_timestamps_are_refused_with_a_reason(value: object, unit: str | None, reason: str) -> None:
    with pytest.raises(LooplineError) as err:
        parse_time(value, unit)
    assert reason in err.value.message and err.value.kind.permanent


@pytest.mark.parametrize("raw", [
    b'{"amount": NaN}', b'{"amount": Infinity}', b'{"x": [1, -Infinity]}', b'{"amount": 1e400}',
    b"", b"\xff\xfe", b"[1]", b'"text"', b"{", b"[" * 100_000 + b"]" * 100_000,
    b'{"event_id": 5}', b'{"event_id": ""}', b'{"customer_id": {"a": 1}}', b'{"ts": "2025-11-22 08:00"}',
])
def test_records_that_can_never_be_read_are_refused(raw: bytes) -> None:
    with pytest.raises(LooplineError) as err:
        wrap_json("transactions", "src", raw, "customer_id")
    assert err.value.kind.permanent


def test_ids_come_from_canonical_json_so_spacing_and_key_order_do_not_matter() -> None:
    a = wrap_json("transactions", "s", b'{"customer_id": "c1", "amount": 3}', "customer_id")
    b = wrap_json("transactions", "s", b'{"amount":3,"customer_id":"c1"}', "customer_id")
    c = wrap_json("transactions", "s", b'{"amount":4,"customer_id":"c1"}', "customer_id")
    assert a.event_id == b.event_id != c.event_id


def test_the_event_id_header_wins_and_a_200kb_string_is_just_data() -> None:
    raw = json.dumps({"event_id": "e1", "customer_id": "c", "note": "x" * 200_000}).encode()
    env = wrap_json("transactions", "s", raw, "customer_id", event_id="from-header")
    assert env.event_id == "from-header" and env.payload == raw


# --- with a contract: field names, units, protobuf, the payload cap ------------------------------

CLICKS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "required": ["user", "at"],
    "properties": {"click_id": {"type": "string"}, "user": {"type": "string"}, "at": {"type": "number"},
                   "page": {"type": "string"}},
    "x-loopline": {"dataset": "clicks", "version": "1.0", "entity_field": "user",
                   "event_time": {"field": "at", "unit": "ms"}, "event_id_field": "click_id",
                   "unknown_fields": "keep", "max_payload_bytes": 256},
}


@pytest.fixture(scope="module")
def contracts(tmp_path_factory: pytest.TempPathFactory) -> Contracts:
    root = tmp_path_factory.mktemp("contracts")
    (root / "clicks").mkdir()
    (root / "clicks" / "v1.json").write_text(json.dumps(CLICKS))
    (root / "transactions").mkdir()
    (root / "transactions" / "v1.json").write_bytes((ROOT / "contracts" / "transactions" / "v1.json").read_bytes())
    return Contracts.load(root, strict=True)


def test_the_contract_names_the_entity_the_event_time_and_its_unit_and_the_event_id(contracts: Contracts) -> None:
    raw = json.dumps({"click_id": "k1", "user": "u7", "at": T * 1000, "ts": 5}).encode()
    env = wrap(contracts.current("clicks"), "src", raw)
    assert (env.event_id, env.entity_id, env.event_time, env.dataset) == ("k1", "u7", T, "clicks")
    small = json.dumps({"user": "u7", "at": T}).encode()
    assert wrap(contracts.current("clicks"), "src", small).event_time == T / 1000  # the contract says ms
    assert wrap(contracts.current("clicks"), "src", small, ts_unit="s").event_time == T  # the header overrides
    with pytest.raises(LooplineError, match="outside"):
        wrap(contracts.current("clicks"), "src", raw, ts_unit="s")


def test_a_protobuf_record_is_enveloped_with_its_bytes_and_content_type(contracts: Contracts) -> None:
    msg = Transaction(event_id="p1", customer_id="c3", merchant_id="m", amount=1.0, currency="EUR", country="NL",
                      merchant_category="grocery", ts=T * 1000.0)
    raw = msg.SerializeToString()
    env = wrap(contracts.current("transactions"), "src", raw, content_type="application/x-protobuf")
    assert (env.event_id, env.entity_id, env.event_time) == ("p1", "c3", T)
    assert env.payload == raw and env.content_type == "application/x-protobuf"
    unnamed = wrap(contracts.current("transactions"), "src", Transaction(customer_id="c3").SerializeToString(),
                   content_type="application/x-protobuf", now=T)
    assert unnamed.event_id and unnamed.event_time == T  # derived id; no event time: the ingest time


@pytest.mark.parametrize(("dataset", "content_type", "raw", "reason"), [
    ("transactions", "application/x-protobuf", b"\xff\xff\xff", "undecodable"),
    ("transactions", "application/xml", b"<a/>", "neither application/json nor application/x-protobuf"),
    ("clicks", "application/x-protobuf", b"", "takes no protobuf"),
    ("clicks", None, json.dumps({"user": "u", "at": T, "pad": "x" * 300}).encode(), "over the 256-byte cap"),
    ("clicks", None, json.dumps({"user": "u", "at": T, "click_id": 3}).encode(), "click_id must be a non-empty"),
    ("clicks", None, json.dumps({"user": "u", "at": True}).encode(), "must be a number"),
])
def test_what_the_contract_refuses_at_the_door(contracts: Contracts, dataset: str, content_type: str | None,
                                               raw: bytes, reason: str) -> None:
    with pytest.raises(LooplineError) as err:
        wrap(contracts.current(dataset), "src", raw, content_type=content_type)
    assert reason in err.value.message and err.value.kind.permanent
