"""Feature views as pure functions: parsing, windows, lateness, and online/offline equality."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from loopline_feature.adapters import catalog
from loopline_feature.domain import training
from loopline_feature.domain.views import Request, Timeline, ViewError, parse

ROOT = Path(__file__).resolve().parents[3]
VIEW = catalog.load(ROOT / "features").get("transactions")
T0 = 1795341600.0  # 2026-11-22 10:00 UTC
H = 3600.0


def _doc() -> dict:
    return yaml.safe_load((ROOT / "features/transactions/v1.yaml").read_text())


def test_the_shipped_view_keeps_the_model_vector() -> None:
    assert VIEW.ref == "transactions:1"
    assert VIEW.vector == ("amount", "log_amount", "txn_count_24h", "mean_amount_24h", "amount_to_mean", "night",
                           "risky_category")


def test_windows_slide_with_the_request_time_not_the_last_event() -> None:
    tl = Timeline([T0, T0 + H, T0 + 2 * H], [[10.0, 20.0, 60.0]])
    names = ["txn_count_1h", "txn_count_24h", "mean_amount_24h", "sum_amount_24h", "max_amount_7d", "std_amount_7d"]
    assert VIEW.values(tl, T0 + 2 * H + 1, None, names) == [1.0, 3.0, 30.0, 90.0, 60.0,
                                                            pytest.approx(math.sqrt((400 + 100 + 900) / 3))]
    # a day later the first event has left the 24 h windows; the 7 d ones still see all three
    later = VIEW.values(tl, T0 + 24 * H + 30, None, names)
    assert later[:4] == [0.0, 2.0, 40.0, 80.0] and later[4] == 60.0
    assert VIEW.values(tl, T0 + 8 * 86400, None, ["txn_count_7d"]) == [0.0]
    _, latest = VIEW.aggregates_at(tl, T0 + 8 * 86400)
    assert latest is None, "nothing within the TTL: not found"
    # the window ends before t: an event at exactly t is not its own history
    assert VIEW.values(tl, T0 + H, None, ["txn_count_24h"]) == [1.0]


def test_on_demand_features_need_the_request_row() -> None:
    tl = Timeline([T0 - H], [[40.0]])
    night = T0 - 7 * H  # 03:00 UTC
    row = Request({"amount": 100.0}, {"merchant_category": "gift_cards"})
    assert VIEW.values(Timeline([night - H], [[40.0]]), night, row, list(VIEW.vector)) == [
        100.0, math.log1p(100.0), 1.0, 40.0, 100.0 / 41.0, 1.0, 1.0]
    day = Request({"amount": 5.0}, {"merchant_category": "grocery"})
    assert VIEW.values(tl, T0, day, ["night", "risky_category"]) == [0.0, 0.0]
    with pytest.raises(ViewError, match="request"):
        VIEW.values(tl, T0, None, ["amount"])
    with pytest.raises(ViewError, match="merchant_category"):
        VIEW.values(tl, T0, Request({"amount": 1.0}, {}), ["risky_category"])
    with pytest.raises(ViewError, match="finite"):
        VIEW.values(tl, T0, Request({"amount": math.nan}, {}), ["amount"])


def test_trim_says_whether_it_dropped_anything() -> None:
    tl = Timeline([T0, T0 + H], [[1.0, 2.0]])
    assert not tl.trim(T0)
    assert tl.trim(T0 + 1) and tl.times == [T0 + H] and tl.columns == [[2.0]]


def test_lateness_rule() -> None:
    assert VIEW.admits(None, T0)
    assert VIEW.admits(T0, T0 - VIEW.lateness_s)
    assert not VIEW.admits(T0, T0 - VIEW.lateness_s - 1e-3)


@pytest.mark.parametrize(("change", "reason"), [
    ({"version": 0}, "version"),
    ({"ttl": "soon"}, "ttl must be a duration"),
    ({"aggregates": [{"name": "x", "fn": "median", "window": "1h"}]}, r"fn in"),
    ({"aggregates": [{"name": "x", "fn": "sum", "field": "nope", "window": "1h"}]}, "field must be one of"),
    ({"aggregates": [{"name": "x", "fn": "count", "window": "30d"}]}, r"longer than the view's ttl"),
    ({"vector": ["amount", "nope"]}, "does not define"),
    ({"on_demand": [{"name": "txn_count_1h", "fn": "value", "field": "amount"}]}, "defined twice"),
    ({"name": "Bad Name"}, "lower_snake_case"),
])
def test_a_broken_view_is_refused_with_one_line(change: dict, reason: str) -> None:
    doc = {**_doc(), **change}
    with pytest.raises(ViewError, match=reason) as err:
        parse(doc)
    assert "\n" not in str(err.value)


def test_a_broken_view_file_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "transactions").mkdir()
    (tmp_path / "transactions" / "v1.yaml").write_text("name: [unclosed")
    with pytest.raises(ViewError, match=r"v1\.yaml"):
        catalog.load(tmp_path)
    (tmp_path / "transactions" / "v1.yaml").write_text(yaml.safe_dump({**_doc(), "version": 2}))
    with pytest.raises(ViewError, match=r"must be transactions/v2\.yaml"):
        catalog.load(tmp_path)


events = st.lists(st.tuples(st.floats(0, 5 * 86400), st.floats(0, 5000, allow_nan=False),
                            st.sampled_from(["grocery", "crypto"])), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(events, st.lists(st.floats(-86400, 6 * 86400), min_size=1, max_size=5))
def test_online_and_offline_agree_whatever_the_arrival_order(rows: list, probes: list) -> None:
    """The online row is built event by event in arrival order (late ones included, too-late ones not);
    the offline builder sorts the admitted events of the log. At any instant their values are equal."""
    online = Timeline(width=1)
    watermark = None
    admitted = []
    for t, amount, _ in rows:
        if VIEW.admits(watermark, T0 + t):
            online.add(T0 + t, (amount,))
            admitted.append((T0 + t, amount))
            watermark = T0 + t if watermark is None else max(watermark, T0 + t)
    offline = Timeline([t for t, _ in admitted], [[a for _, a in admitted]])
    names = VIEW.feature_names
    for p in probes:
        request = Request({"amount": 12.5}, {"merchant_category": "crypto"})
        a, b = VIEW.values(online, T0 + p, request, names), VIEW.values(offline, T0 + p, request, names)
        assert a == pytest.approx(b, rel=0, abs=1e-9)


def test_a_training_row_sees_only_the_events_before_it() -> None:
    rows = [training.Row(f"e{i}", "c1", T0 + i * H, T0 + i * H + 60, float(i == 3), (a,), ("grocery", f"C{i % 2}"))
            for i, a in enumerate([10.0, 20.0, 30.0, 1000.0])]
    history = {"c1": Timeline([r.event_time for r in rows], [[r.numbers[0] for r in rows]])}
    ts = training.build(VIEW, T0 + 10 * H, list(reversed(rows)), history)
    assert ts.event_ids == ["e0", "e1", "e2", "e3"]
    counts = [row[2] for row in ts.features]
    assert counts == [0.0, 1.0, 2.0, 3.0]
    assert ts.features[3][4] == pytest.approx(1000.0 / 21.0)
    assert ts.positives == 1
    assert ts.strings == {"merchant_category": ["grocery"] * 4, "country": ["C0", "C1", "C0", "C1"]}, \
        "string fields ride along as slice columns, in row order"
