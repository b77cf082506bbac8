"""The monitor's pure parts: windows, alert episodes, performance findings."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from loopline_core.errors import LooplineError
from loopline_monitor.domain import alerting
from loopline_monitor.domain.evaluation import Labelled, performance
from loopline_monitor.domain.windows import Row, Spec, Window, latency_bucket, latency_quantile


def _row(seq: int, at: float, v: float = 0.0, *, failed: bool = False) -> Row:
    return Row(seq, at, (v, float(seq % 2)), v, 1.0 + seq % 10, failed, False)


def test_specs_parse_and_refuse() -> None:
    assert Spec.parse("count:500/100") == Spec("count", 500, 100)
    assert Spec.parse("time:600s/60s") == Spec("time", 600, 60)
    assert str(Spec.parse("count:200")) == "count:200"
    for bad in ("count:100/200", "time:0s", "rows:5", "count:1.5", "count:-1"):
        with pytest.raises(LooplineError):
            Spec.parse(bad)


def test_sliding_count_window_keeps_exact_counts() -> None:
    w = Window(Spec.parse("count:4/2"), ["a", "b"])
    due = [w.add(_row(i, float(i), float(i))) for i in range(1, 9)]
    assert due == [False] * 3 + [True] * 5, "due from the first full window on, until evaluated"
    snap = w.snapshot()
    assert snap.size == 4 and snap.last_seq == 8
    assert snap.columns["a"].sample().tolist() == [5.0, 6.0, 7.0, 8.0], "only the last 4 rows"
    assert snap.columns["b"].n == 4 and snap.prediction.n == 4


def test_count_window_evaluates_every_step_once_full() -> None:
    w = Window(Spec.parse("count:4/2"), ["a", "b"])
    evaluations = []
    for i in range(1, 11):
        if w.add(_row(i, float(i), float(i))):
            evaluations.append(w.snapshot().last_seq)
            w.evaluated()
    assert evaluations == [4, 6, 8, 10], "first when full, then every step"


def test_failed_rows_count_as_errors_not_as_values() -> None:
    w = Window(Spec.parse("count:3"), ["a", "b"])
    for i, failed in enumerate([False, True, False], start=1):
        w.add(_row(i, float(i), float(i), failed=failed))
    snap = w.snapshot()
    assert snap.failed == 1 and snap.columns["a"].n == 2


def test_time_window_cuts_at_step_boundaries_and_drops_late_rows() -> None:
    w = Window(Spec.parse("time:10s/5s"), ["a", "b"])
    evaluated = []
    for seq, at in enumerate([100.0, 101, 103, 104.5, 105.2, 107, 109, 110.1, 96.0, 111], start=1):
        if w.add(_row(seq, at, at)):
            s = w.snapshot()
            evaluated.append((s.size, s.start, s.end))
            w.evaluated()
    # windows end at 105 (rows 100-104.5) and 110 (rows 100-109: the last 10 s)
    assert evaluated == [(4, 100.0, 104.5), (7, 100.0, 109.0)]
    assert w.snapshot().columns["a"].values.min() >= 100.0, "a row older than the window is not counted"


def test_restore_continues_where_the_last_evaluation_stopped() -> None:
    rows = [_row(i, float(i), float(i)) for i in range(1, 8)]
    w = Window(Spec.parse("count:4/2"), ["a", "b"])
    w.restore(rows, evaluated_seq=6, next_end=None)
    assert len(w.rows) == 4 and w.snapshot().last_seq == 7
    assert w.add(_row(8, 8.0, 8.0)) is True, "rows 7 and 8 are new since the evaluation at 6: due"


def test_latency_quantile_is_within_a_bucket() -> None:
    lat = Counter(latency_bucket(v) for v in np.linspace(1, 100, 1000))
    p95 = latency_quantile(lat, 0.95)
    assert 95 <= p95 <= 95 * 1.25 + 1


POLICY = alerting.Policy(n=2, m=3, repeat_s=60)


def _run(crossings: list[bool], start: alerting.State | None = None,
         severity: str = "warning") -> list[alerting.Step]:
    s = start or alerting.State()
    out = []
    for i, c in enumerate(crossings):
        st = alerting.step(s, c, severity, now=float(i), window_start=10.0 * i, window_end=10.0 * i + 10,
                           policy=POLICY, new_id=f"e{i}")
        out.append(st)
        s = st.state
    return out


def test_n_of_m_opens_once_and_resolves() -> None:
    steps = _run([False, True, False, True, True, True, False, False, True, False, False])
    actions = [s.action for s in steps]
    assert actions.count(alerting.Action.RAISE) == 1, "one alert per episode"
    raised = next(s for s in steps if s.action is alerting.Action.RAISE)
    assert raised.state.episode_id == "e3" and raised.state.onset == 30.0, "onset: the end of the last clear window"
    assert alerting.Action.RESOLVE in actions
    assert _run([True, False, True, False, False])[2].action is alerting.Action.RAISE
    assert all(s.action is alerting.Action.NONE for s in _run([True, False, False, True, False, False]))


def test_repeat_interval_and_escalation() -> None:
    s = _run([True, True])[-1].state
    assert s.active
    quiet = alerting.step(s, True, "warning", now=30, window_start=0, window_end=1, policy=POLICY, new_id="x")
    assert quiet.action is alerting.Action.NONE, "within the repeat interval"
    worse = alerting.step(s, True, "critical", now=30, window_start=0, window_end=1, policy=POLICY, new_id="x")
    assert worse.action is alerting.Action.REPEAT and worse.state.severity == "critical"
    later = alerting.step(s, True, "warning", now=200, window_start=0, window_end=1, policy=POLICY, new_id="x")
    assert later.action is alerting.Action.REPEAT and later.state.repeat == 2
    assert later.state.episode_id == s.episode_id


def test_silences_match_globs_until_they_end() -> None:
    silences = [alerting.Silence(model="fr*", kind="latency", until=100.0)]
    assert alerting.silenced(silences, "fraud", 3, "latency", 50.0) is not None
    assert alerting.silenced(silences, "fraud", 3, "latency", 150.0) is None
    assert alerting.silenced(silences, "fraud", 3, "feature_drift", 50.0) is None


def test_performance_findings_from_labels() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400).astype(float)
    good = np.clip(y * 0.7 + rng.normal(0.15, 0.1, 400), 0, 1)
    mon = {"threshold": 0.5, "performance": [{"metric": "auc_roc", "direction": "higher", "warning": 0.8,
                                              "critical": 0.7}]}
    figures, findings = performance(Labelled(y, good, np.full(400, 30.0)), mon, predicted=800)
    assert figures["auc_roc"] > 0.95 and not findings[0].crossed
    assert figures["label_coverage"] == 0.5 and figures["label_delay_p50_s"] == 30.0
    assert 0 <= figures["precision"] <= 1 and 0 <= figures["recall"] <= 1
    flipped = 1 - good
    figures, findings = performance(Labelled(y, flipped, np.full(400, 30.0)), mon, predicted=400)
    assert findings[0].crossed and findings[0].severity == "critical" and figures["auc_roc"] < 0.1
