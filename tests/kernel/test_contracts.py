"""Data contracts as files: loading and refusing, checking records, decoding JSON and protobuf,
evolution (BACKWARD compatibility, majors side by side), and `loopline contracts` (pure: no servers)."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopline.datasets.v1.transactions_pb2 import Transaction
from loopline_cli.app import app
from loopline_core.contracts import Contract, ContractError, Contracts, compatible, load_file
from loopline_core.errors import LooplineError
from loopline_core.settings import CoreSettings
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
V1 = json.loads((ROOT / "contracts" / "transactions" / "v1.json").read_text())
GOOD = {"event_id": "e1", "customer_id": "c1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
        "country": "NL", "merchant_category": "grocery", "ts": 1795341600}


def write(root: Path, doc: Any, dataset: str = "transactions", major: int = 1) -> Path:
    path = root / dataset / f"v{major}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def variant(change: Any = None, **meta: Any) -> dict[str, Any]:
    """transactions/v1 with ``change(doc)`` applied and x-loopline keys replaced."""
    doc = copy.deepcopy(V1)
    doc["x-loopline"].update(meta)
    if change is not None:
        change(doc)
    return doc


@pytest.fixture(scope="module")
def v1() -> Contract:
    return Contracts.load(ROOT / "contracts", strict=True).current("transactions")


# --- the file and the loader ---------------------------------------------------------------------

def test_the_repository_contract_is_what_the_services_default_to(v1: Contract) -> None:
    assert CoreSettings.model_fields["contracts_dir"].default == ROOT / "contracts"
    assert (v1.ref, v1.version, v1.major, v1.entity_field, v1.event_time_field, v1.ts_unit, v1.event_id_field) == \
        ("transactions/v1", "1.0", 1, "customer_id", "ts", "auto", "event_id")
    assert (v1.label_dataset, v1.label_key, v1.message_type) == ("transactions", "event_id",
                                                                 "loopline.datasets.v1.Transaction")
    assert v1.max_payload_bytes == 65536 and v1.unknown_fields == "keep"


@pytest.mark.parametrize(("content", "reason"), [
    ("{", "not JSON"),
    ('{"type": NaN}', "not JSON"),
    ("[1]", "must be a JSON object"),
    (variant(lambda d: d.update({"$schema": "http://json-schema.org/draft-07/schema#"})), "$schema must be"),
    (variant(lambda d: d["properties"]["amount"].update({"type": "money"})), "not a valid JSON Schema 2020-12"),
    (variant(lambda d: d["properties"]["amount"].update({"minimum": "zero"})), "not a valid JSON Schema"),
    (variant(lambda d: d.update({"$defs": {"x": {}}})), "keyword '$defs'"),
    (variant(lambda d: d["properties"].update({"tags": {"prefixItems": [{"type": "string"}]}})),
     "keyword 'prefixItems'"),
    (variant(lambda d: d["properties"].update({"tags": {"unevaluatedProperties": False}})),
     "keyword 'unevaluatedProperties'"),
    (variant(lambda d: d["properties"]["device"].update({"$ref": "#/properties/currency"})), "keyword '$ref'"),
    (variant(lambda d: d["properties"]["device"].update({"format": "uuid"})), "format 'uuid'"),
    (variant(lambda d: d.pop("x-loopline")), "x-loopline"),
    (variant(version="1"), "version must be <major>.<minor>"),
    (variant(version="2.0"), "belongs in transactions/v2.json"),
    (variant(dataset="payments"), "belongs in payments/v1.json"),
    (variant(entity_field="account"), "'account' is not a property"),
    (variant(unknown_fields="ignore"), "unknown_fields must be one of"),
    (variant(unknown_fields="reject"), "additionalProperties"),
    (variant(max_payload_bytes=0), "max_payload_bytes"),
    (variant(max_payload_bytes=True), "max_payload_bytes"),
    (variant(message_type="loopline.datasets.v1.Nope"), "not a generated protobuf message"),
    (variant(lambda d: d["properties"].pop("device")), "fields the schema does not: ['device']"),
    (variant(accept_until="2026-01-01T00:00:00"), "needs a zone"),
    (variant(event_time={"field": "ts", "unit": "minutes"}), "unit must be one of"),
    (variant(colour="blue"), "unknown keys ['colour']"),
])
def test_a_file_that_cannot_serve_is_refused_with_a_one_line_reason(tmp_path: Path, content: Any,
                                                                   reason: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ContractError) as err:
        load_file(path)
    message = str(err.value)
    assert reason in message and "\n" not in message and message.startswith(str(path))


def test_a_refused_file_leaves_the_others_serving(tmp_path: Path) -> None:
    write(tmp_path, V1)
    write(tmp_path, "{ not json", major=2)
    write(tmp_path, {"type": "object"}, dataset="labels")
    contracts = Contracts.load(tmp_path)
    assert contracts.datasets() == ["transactions"]
    assert contracts.current("transactions").ref == "transactions/v1"
    assert sorted(Path(p).name for p in contracts.refused) == ["v1.json", "v2.json"]
    assert all("\n" not in r for r in contracts.refused.values())
    with pytest.raises(ContractError, match=r"labels/v1.json: \$schema must be"):
        Contracts.load(tmp_path, strict=True)


def test_an_unknown_dataset_is_a_clear_error(v1: Contract) -> None:
    contracts = Contracts([v1])
    with pytest.raises(LooplineError, match=r"no contract for dataset 'payments' \(known: transactions\)"):
        contracts.current("payments")
    with pytest.raises(ContractError, match="no contracts directory"):
        Contracts.load("/nonexistent/contracts")


# --- records -------------------------------------------------------------------------------------

def test_every_violation_is_listed_with_field_rule_and_message(v1: Contract) -> None:
    assert v1.violations(GOOD) == []
    bad = {**GOOD, "amount": -1, "currency": "EURO", "ts": True}
    del bad["customer_id"]
    assert sorted((f, r) for f, r, _ in v1.violations(bad)) == [
        ("amount", "range"), ("currency", "length"), ("customer_id", "required"), ("ts", "type")]
    messages = {f: m for f, _, m in v1.violations(bad)}
    assert messages["ts"] == "ts must be a number or a string, got boolean"
    assert messages["amount"] == "amount=-1 is below 0"
    assert v1.violations([1, 2]) == [("", "type", "record must be a JSON object")]
    with pytest.raises(LooplineError) as err:
        v1.check(bad)
    assert err.value.details == {"contract": "transactions/v1", "field": "customer_id", "rule": "required"}
    assert err.value.kind.permanent


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("amount", True, "type"), ("amount", "12.5", "type"), ("amount", 1_000_000.01, "range"),
    ("amount", 10**400, "range"), ("amount", float("nan"), "finite"), ("amount", float("inf"), "range"),
    ("currency", "EU", "length"), ("country", None, "type"), ("merchant_category", ["grocery"], "type"),
    ("event_id", 5, "type"), ("customer_id", 17, "type"), ("ts", float("-inf"), "finite"), ("ts", None, "type"),
    ("currency", "€€€€", "length"),
])
def test_the_rules_of_the_old_hand_checks_hold(v1: Contract, field: str, value: Any, rule: str) -> None:
    problems = v1.violations({**GOOD, field: value})
    assert (field, rule) in [(p.field, p.rule) for p in problems], problems
    assert v1.conform({**GOOD, field: value}) is None


def test_what_the_old_checks_accepted_is_still_accepted(v1: Contract) -> None:
    for record in [GOOD, {**GOOD, "device": None, "event_id": None}, {**GOOD, "amount": 0},
                   {**GOOD, "amount": 1_000_000}, {**GOOD, "ts": "2026-11-22T10:00:00Z"}, {**GOOD, "note": "x"},
                   {k: v for k, v in GOOD.items() if k != "event_id"}, {**GOOD, "currency": "€€€"}]:
        assert v1.check(record) is record, record  # kept as sent: transactions keeps unknown fields


def test_a_200kb_value_makes_a_short_reason(v1: Contract) -> None:
    with pytest.raises(LooplineError) as err:
        v1.check({**GOOD, "amount": "9" * 200_000})
    assert len(err.value.message) < 200


def test_unknown_fields_rejected_or_dropped_as_the_contract_says(tmp_path: Path) -> None:
    closed = variant(lambda d: d.update({"additionalProperties": False}), unknown_fields="reject")
    write(tmp_path / "reject", closed)
    write(tmp_path / "drop", variant(unknown_fields="drop"))
    reject = Contracts.load(tmp_path / "reject", strict=True).current("transactions")
    drop = Contracts.load(tmp_path / "drop", strict=True).current("transactions")
    extra = {**GOOD, "note": "hi", "score": 3}
    assert sorted((f, r) for f, r, _ in reject.violations(extra)) == [("note", "unknown"), ("score", "unknown")]
    with pytest.raises(LooplineError, match="note is not in the contract"):
        reject.check(extra)
    assert drop.check(extra) == GOOD and drop.check(GOOD) is GOOD
    assert reject.check(GOOD) is GOOD


# --- decoding ------------------------------------------------------------------------------------

def test_json_and_protobuf_payloads_decode_to_the_same_record(v1: Contract) -> None:
    proto = Transaction(**GOOD)  # type: ignore[arg-type]
    as_proto = v1.decode("application/x-protobuf", proto.SerializeToString())
    assert as_proto == {**GOOD, "ts": float(GOOD["ts"])}
    assert v1.decode(None, json.dumps(GOOD).encode()) == GOOD
    assert v1.decode("application/json; charset=utf-8", json.dumps(GOOD).encode()) == GOOD
    assert v1.check(as_proto) == as_proto


def test_a_protobuf_field_left_unset_is_absent_and_zero_is_a_value(v1: Contract) -> None:
    record = v1.decode("application/x-protobuf", Transaction(customer_id="c", amount=0.0).SerializeToString())
    assert record == {"customer_id": "c", "amount": 0.0}
    assert ("merchant_id", "required") in [(p.field, p.rule) for p in v1.violations(record)]
    nan = v1.decode("application/x-protobuf", Transaction(**{**GOOD, "amount": math.nan}).SerializeToString())  # type: ignore[arg-type]
    assert [(p.field, p.rule) for p in v1.violations(nan)] == [("amount", "finite")]


@pytest.mark.parametrize(("content_type", "payload", "reason"), [
    ("application/x-protobuf", b"\xff\xff\xff\xff", "undecodable: not a loopline.datasets.v1.Transaction"),
    ("application/x-protobuf", b"\x12\x02\xff\xfe", "undecodable"),  # customer_id that is not UTF-8
    ("application/json", b"{", "not JSON"),
    ("application/json", b"[1]", "must be a JSON object"),
    ("application/json", b'{"amount": NaN}', "non-finite"),
    ("text/csv", b"a,b", "neither application/json nor application/x-protobuf"),
    ("application/json", b'{"x": "' + b"a" * 70_000 + b'"}', "over the 65536-byte cap"),
    ("application/x-protobuf", b"\x0a" + b"\x80\x80\x04" + b"a" * 65536, "over the 65536-byte cap"),
])
def test_payloads_that_do_not_decode_are_refused_with_a_reason(v1: Contract, content_type: str, payload: bytes,
                                                               reason: str) -> None:
    with pytest.raises(LooplineError) as err:
        v1.decode(content_type, payload)
    assert reason in err.value.message and err.value.kind.permanent


def test_a_dataset_without_a_message_type_takes_no_protobuf(tmp_path: Path) -> None:
    doc = variant()
    del doc["x-loopline"]["message_type"]
    contract = load_file(write(tmp_path, doc))
    with pytest.raises(LooplineError, match="takes no protobuf"):
        contract.decode("application/x-protobuf", Transaction(customer_id="c").SerializeToString())


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from([*sorted(GOOD), "note"]), JSON_VALUES, max_size=9), st.booleans())
def test_the_compiled_check_and_the_explanation_agree(record: dict[str, Any], fill: bool) -> None:
    """Whatever a producer sends, the fast check accepts exactly what lists no violation."""
    contract = Contracts.load(ROOT / "contracts", strict=True).current("transactions")
    value = {**GOOD, **record} if fill else record
    accepted = contract.conform(value) is not None
    problems = contract.violations(value)
    assert accepted == (problems == []), (value, problems)
    assert all(p.field.split(".")[0] in value for p in problems if p.rule != "required"), problems


# --- evolution -----------------------------------------------------------------------------------

def _proposed(tmp_path: Path, change: Any = None, major: int = 1, **meta: Any) -> Contract:
    meta.setdefault("version", f"{major}.1")
    return load_file(write(tmp_path / "proposed", variant(change, **meta), major=major))


def test_adding_an_optional_field_is_compatible(v1: Contract, tmp_path: Path) -> None:
    proposed = _proposed(tmp_path, lambda d: d["properties"].update({"channel": {"type": "string"}}))
    assert compatible(v1, proposed) == []
    loosened = _proposed(tmp_path, lambda d: d["properties"]["amount"].update({"maximum": 2_000_000}),
                         max_payload_bytes=131072)
    assert compatible(v1, loosened) == []


@pytest.mark.parametrize(("change", "meta", "reason"), [
    (lambda d: (d["properties"].pop("device")), {"message_type": None}, "device: removed"),
    (lambda d: (d["properties"].update({"merchant": d["properties"].pop("merchant_id")}),
                d["required"].__setitem__(d["required"].index("merchant_id"), "merchant")), {"message_type": None},
     "merchant_id: removed (a rename is a removal)"),
    (lambda d: d["properties"]["amount"].update({"type": "string"}), {}, "amount: type changed: number -> string"),
    (lambda d: d["properties"]["ts"].update({"type": "number"}), {}, "ts: type changed: number|string -> number"),
    (lambda d: d["required"].append("device"), {}, "device: optional -> required"),
    (lambda d: d["properties"]["amount"].update({"maximum": 5000}), {},
     "amount: maximum tightened: 1000000 -> 5000"),
    (lambda d: d["properties"]["amount"].update({"minimum": 1}), {}, "amount: minimum tightened: 0 -> 1"),
    (lambda d: d["properties"]["currency"].update({"enum": ["EUR", "USD"]}), {}, "currency: enum narrowed"),
    (lambda d: d["properties"]["merchant_id"].update({"maxLength": 8}), {},
     "merchant_id: maxLength tightened: none -> 8"),
    (lambda d: d["properties"]["country"].update({"pattern": "^[A-Z]{2}$"}), {}, "country: pattern added"),
    (lambda d: (d["properties"].update({"channel": {"type": "string"}}), d["required"].append("channel")), {},
     "channel: added as required"),
    (lambda d: d.update({"additionalProperties": False}), {"unknown_fields": "reject"},
     "unknown fields: keep -> reject"),
    (None, {"max_payload_bytes": 1024}, "payload cap lowered: 65536 -> 1024 bytes"),
    (None, {"entity_field": "merchant_id"}, "entity field changed: customer_id -> merchant_id"),
    (None, {"version": "0.9"}, None),  # not a valid version at all: refused at load
])
def test_narrowing_is_incompatible_and_says_why(v1: Contract, tmp_path: Path, change: Any, meta: dict[str, Any],
                                               reason: str | None) -> None:
    if reason is None:
        with pytest.raises(ContractError):
            _proposed(tmp_path, change, **meta)
        return
    reasons = compatible(v1, _proposed(tmp_path, change, **meta))
    assert any(r.startswith(reason) for r in reasons), reasons


def test_enum_widening_is_compatible_and_narrowing_is_not(tmp_path: Path) -> None:
    base = _proposed(tmp_path / "a", lambda d: d["properties"]["currency"].update({"enum": ["EUR", "USD"]}),
                     version="1.0")
    wider = _proposed(tmp_path / "b", lambda d: d["properties"]["currency"].update({"enum": ["EUR", "USD", "GBP"]}))
    narrower = _proposed(tmp_path / "c", lambda d: d["properties"]["currency"].update({"enum": ["EUR"]}))
    assert compatible(base, wider) == []
    assert compatible(base, narrower) == ["currency: enum narrowed (drops ['USD'])"]


def test_drop_to_reject_is_incompatible_and_reject_to_drop_is_not(tmp_path: Path) -> None:
    drop = _proposed(tmp_path / "a", unknown_fields="drop", version="1.0")
    reject = _proposed(tmp_path / "b", lambda d: d.update({"additionalProperties": False}), unknown_fields="reject")
    assert compatible(drop, reject) == ["unknown fields: drop -> reject refuses records accepted today"]
    back = _proposed(tmp_path / "c", unknown_fields="drop", version="1.2")
    assert compatible(reject, back) == []


def test_a_new_major_is_accepted_beside_the_old_one_until_its_window_closes(tmp_path: Path) -> None:
    until = datetime(2030, 1, 1, tzinfo=UTC)
    write(tmp_path, variant(accept_until=until.isoformat()))
    write(tmp_path, variant(lambda d: d["properties"]["amount"].update({"type": "integer"}), version="2.0"),
          major=2)
    contracts = Contracts.load(tmp_path, strict=True)
    v1, v2 = contracts.get("transactions", 1), contracts.get("transactions", 2)
    assert compatible(v1, v2) == []  # a new major: no reasons
    assert compatible(v2, v1) == ["v1 is older than the current v2"]
    assert contracts.current("transactions") is v2
    assert [c.ref for c in contracts.accepted("transactions", until - timedelta(seconds=1))] == \
        ["transactions/v2", "transactions/v1"]
    assert [c.ref for c in contracts.accepted("transactions", until)] == ["transactions/v2"]


# --- the CLI -------------------------------------------------------------------------------------

def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["contracts", *args])
    return result.exit_code, result.output


def test_cli_check_says_compatible_with_the_versions(tmp_path: Path) -> None:
    proposed = write(tmp_path / "p", variant(lambda d: d["properties"].update({"channel": {"type": "string"}}),
                                             version="1.1"))
    code, output = _cli("check", str(proposed), "--dir", str(ROOT / "contracts"))
    assert (code, output.strip()) == (0, "compatible with transactions/v1 (1.0 -> 1.1)")


def test_cli_check_lists_each_reason_and_fails(tmp_path: Path) -> None:
    proposed = write(tmp_path / "p", variant(lambda d: (d["properties"]["amount"].update({"type": "string"}),
                                                        d["required"].append("device")), version="1.1"))
    code, output = _cli("check", str(proposed), "--dir", str(ROOT / "contracts"))
    lines = output.strip().splitlines()
    assert code == 1
    assert "amount: type changed: number -> string" in lines and "device: optional -> required" in lines


def test_cli_check_refuses_a_broken_file_in_one_line_and_the_current_contract_still_serves(tmp_path: Path) -> None:
    root = tmp_path / "contracts"
    write(root, V1)
    broken = write(tmp_path / "p", '{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": ')
    code, output = _cli("check", str(broken), "--dir", str(root))
    assert code == 1 and len(output.strip().splitlines()) == 1 and "not JSON" in output
    write(root, "{ oops", major=2)  # dropped into the directory: refused, and v1 serves on
    code, output = _cli("list", "--dir", str(root))
    assert code == 0 and "1.0" in output and "65536" in output
    assert "refused:" in output and "v2.json: not JSON" in output
    code, output = _cli("show", "transactions", "--dir", str(root))
    assert code == 0 and json.loads(output)["x-loopline"]["version"] == "1.0"


def test_cli_check_a_new_major(tmp_path: Path) -> None:
    proposed = write(tmp_path / "p", variant(lambda d: d["properties"]["amount"].update({"type": "integer"}),
                                             version="2.0"), major=2)
    code, output = _cli("check", str(proposed), "--dir", str(ROOT / "contracts"))
    assert code == 0 and output.startswith("new major transactions/v2 (2.0) beside transactions/v1 (1.0)")
    code, output = _cli("show", "transactions", "--version", "3", "--dir", str(ROOT / "contracts"))
    assert code == 1 and "no contract transactions/v3" in output


RICH = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": False,
    "required": ["id", "n"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 4, "pattern": "^[a-z]"},
        "n": {"type": "integer", "exclusiveMinimum": -3, "maximum": 50, "multipleOf": 2},
        "x": {"type": ["number", "null"], "minimum": -1.5, "exclusiveMaximum": 2.5},
        "kind": {"enum": ["a", "b", 1, None]},
        "one": {"const": 0},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 2}, "maxItems": 3, "uniqueItems": True},
        "inner": {"type": "object", "required": ["k"], "properties": {"k": {"type": "boolean"}},
                  "additionalProperties": {"type": "integer"}},
        "any": {},
    },
    "x-loopline": {"dataset": "rich", "version": "1.0", "entity_field": "id", "event_time": {"field": "n"},
                   "unknown_fields": "reject", "max_payload_bytes": 4096},
}
RICH_KEYS = [*RICH["properties"], "zz"]


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(RICH_KEYS), JSON_VALUES, max_size=10))
def test_the_generated_check_gives_jsonschemas_verdict_and_fields(record: dict[str, Any]) -> None:
    """Our compiled check decides and explains in one pass; jsonschema (2020-12) is the referee."""
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    contract = _rich()
    errors = list(Draft202012Validator(RICH).iter_errors(record))
    finite_ok = all(not isinstance(v, float) or math.isfinite(v) for v in _leaves(record))
    problems = contract.violations(record)
    assert (problems == []) == (not errors and finite_ok), (record, problems, [e.message for e in errors])
    if errors:
        assert {p.field.split(".")[0] for p in problems} <= set(record) | set(RICH["required"]), problems


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


_RICH: list[Contract] = []


def _rich() -> Contract:
    if not _RICH:
        from loopline_core.contracts.model import parse  # noqa: PLC0415

        _RICH.append(parse(RICH))
    return _RICH[0]
