"""Input rules of ingest, as an outside producer meets them (pure: no servers)."""

from __future__ import annotations

import json

import pytest
from loopline_core.errors import LooplineError
from loopline_ingest.domain.envelope import parse_time, wrap_json

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
