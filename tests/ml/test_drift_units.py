"""Dist, the KS p-value helper, default test choice, reference profiles and the Evidently report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from loopline_ml.drift import Dist, column_drift, default_stattest, drift, drift_arrays, ks_pvalue
from loopline_ml.evidently_report import read_drift, render_report
from loopline_ml.profile import QUANTILES, build_profile, load_profile
from scipy import stats


def test_dist_round_trip_and_sample() -> None:
    x = np.array([3.0, 1.0, 2.0, 3.0, 3.0, 1.0])
    d = Dist.of(x)
    assert d.values.tolist() == [1.0, 2.0, 3.0] and d.counts.tolist() == [2, 1, 3] and d.n == 6
    assert np.array_equal(d.sample(), np.sort(x))
    back = Dist.from_json(json.loads(json.dumps(d.to_json())))
    assert np.array_equal(back.values, d.values) and np.array_equal(back.counts, d.counts)
    assert back.values.dtype == np.float64 and back.counts.dtype == np.int64
    assert math.isclose(d.mean(), x.mean()) and math.isclose(d.std(), x.std())


def test_json_keeps_every_float_bit() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    back = Dist.from_json(json.loads(json.dumps(Dist.of(x).to_json())))
    assert np.array_equal(back.sample(), np.sort(x))


def test_from_counts_equals_of_and_drops_zeros() -> None:
    x = np.random.default_rng(1).integers(0, 7, 500).astype(float)
    counts = {float(v): int((x == v).sum()) for v in range(9)}  # 7 and 8 have count 0
    a, b = Dist.from_counts(counts), Dist.of(x)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.counts, b.counts)
    assert 8.0 not in a.values


def test_merge_by_counts_is_the_concatenated_sample() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 10, 300).astype(float), rng.integers(5, 15, 200).astype(float)
    merged = Dist.of(x).merge(Dist.of(y))
    whole = Dist.of(np.concatenate((x, y)))
    assert np.array_equal(merged.values, whole.values) and np.array_equal(merged.counts, whole.counts)


@pytest.mark.parametrize(("n1", "n2", "shift"), [(50, 70, 0.0), (300, 300, 0.3), (900, 4000, 0.1),
                                                 (12000, 800, 0.05), (20000, 15000, 0.02), (7, 5, 1.0)])
def test_ks_pvalue_equals_scipy_ks_2samp(n1: int, n2: int, shift: float) -> None:
    """The private scipy helper it leans on is pinned here: exact and asymptotic modes, ties included."""
    rng = np.random.default_rng(n1 + n2)
    for x, y in [(rng.normal(0, 1, n1), rng.normal(shift, 1, n2)),
                 (rng.integers(0, 30, n1).astype(float), rng.integers(0, 30, n2).astype(float))]:
        expected = stats.ks_2samp(x, y)
        ours = column_drift("c", Dist.of(x), Dist.of(y), "num", "ks")
        assert math.isclose(ours.score, expected.pvalue, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(ks_pvalue(float(expected.statistic), n1, n2), expected.pvalue, rel_tol=1e-9,
                            abs_tol=1e-12)


def test_default_stattest_choice() -> None:
    assert default_stattest(1000, 6, "num") == "ks"
    assert default_stattest(1000, 5, "num") == "chisquare"
    assert default_stattest(1000, 2, "num") == "z"
    assert default_stattest(1000, 40, "cat") == "chisquare"
    assert default_stattest(1000, 2, "cat") == "z"
    assert default_stattest(1001, 6, "num") == "wasserstein"
    assert default_stattest(1001, 5, "num") == "jensenshannon"
    assert default_stattest(1001, 2, "cat") == "jensenshannon"


def test_stattest_checks() -> None:
    d = Dist.of(np.arange(10.0))
    with pytest.raises(ValueError, match="does not apply"):
        column_drift("c", d, d, "cat", "ks")
    with pytest.raises(ValueError, match="does not apply"):
        column_drift("c", d, d, "num", "chisquare")
    with pytest.raises(ValueError, match="unknown stattest"):
        column_drift("c", d, d, "num", "anderson")
    with pytest.raises(ValueError, match="empty"):
        column_drift("c", d, Dist.of(np.array([])), "num")


def test_same_data_no_drift_and_threshold_override() -> None:
    x = np.random.default_rng(3).normal(size=3000)
    t = column_drift("c", Dist.of(x), Dist.of(x), "num")
    assert (t.stattest, t.score, t.drifted) == ("wasserstein", 0.0, False)
    assert column_drift("c", Dist.of(x), Dist.of(x), "num", threshold=0.0).drifted  # distances: >= threshold


def test_drift_arrays_drops_non_finite_per_column() -> None:
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(size=(2000, 2)), rng.normal(0.5, 1, size=(1500, 2))
    ref[::7, 0], cur[::5, 1], cur[3, 0] = np.nan, np.inf, -np.inf
    types = {"a": "num", "b": "num"}
    fast = drift_arrays(ref, cur, ["a", "b"], types)

    def dist(col: np.ndarray) -> Dist:
        return Dist.of(col[np.isfinite(col)])

    slow = drift({"a": dist(ref[:, 0]), "b": dist(ref[:, 1])}, {"a": dist(cur[:, 0]), "b": dist(cur[:, 1])}, types)
    assert [t.drifted for t in fast[0]] == [t.drifted for t in slow[0]] == [True, True]
    for f, s in zip(fast[0], slow[0], strict=True):
        assert math.isclose(f.score, s.score, rel_tol=1e-9)


def test_profile_build_and_load() -> None:
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.normal(size=400), rng.integers(0, 3, 400).astype(float)])
    x[0, 0] = np.nan
    scores = rng.random(400)
    p = build_profile(x, ["amount", "category"], {"amount": "num", "category": "cat"}, scores, {"window": 100})
    back = load_profile(json.loads(json.dumps(p)))
    assert back.rows == 400 and not back.sampled and back.monitoring == {"window": 100}
    assert back.types == {"amount": "num", "category": "cat"}
    assert back.dists["amount"].n == 399 and p["columns"]["amount"]["missing"] == 1
    assert np.array_equal(back.dists["category"].sample(), np.sort(x[:, 1]))
    assert p["columns"]["category"]["categories"] == {str(v): int((x[:, 1] == v).sum()) for v in range(3)}
    assert back.prediction is not None and np.array_equal(back.prediction.sample(), np.sort(scores))
    finite = x[1:, 0]
    assert back.quantiles["amount"][0.5] == float(np.quantile(finite, 0.5))
    assert list(back.quantiles["amount"]) == list(QUANTILES)
    assert back.min["amount"] == finite.min() and back.max["amount"] == finite.max()


def test_profile_sampling_cap_is_deterministic() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1000, 2))
    scores = x[:, 0] * 2
    a = build_profile(x, ["f0", "f1"], {"f0": "num", "f1": "num"}, scores, max_rows=300, seed=9)
    b = build_profile(x, ["f0", "f1"], {"f0": "num", "f1": "num"}, scores, max_rows=300, seed=9)
    assert a == b and a["sampled"] and a["rows"] == 1000 and a["profiled_rows"] == 300
    p = load_profile(a)
    assert p.sampled and p.dists["f0"].n == 300
    # the same rows for every column and the scores
    assert p.prediction is not None and np.array_equal(p.prediction.sample(), np.sort(p.dists["f0"].sample() * 2))
    assert not build_profile(x, ["f0", "f1"], {"f0": "num", "f1": "num"}, None, max_rows=1000)["sampled"]


def test_render_report_html_and_json() -> None:
    rng = np.random.default_rng(7)
    types = {"amount": "num", "category": "cat"}
    ref = {"amount": Dist.of(rng.normal(size=1500)), "category": Dist.of(rng.integers(0, 4, 1500).astype(float))}
    cur = {"amount": Dist.of(rng.normal(1, 1, 700)), "category": Dist.of(rng.integers(0, 5, 900).astype(float))}
    prediction = (Dist.of(rng.random(1500)), Dist.of(rng.random(900)))
    html, body = render_report(ref, cur, types, prediction)
    assert html.lstrip().lower().startswith(b"<!doctype html") and b"</html>" in html.lower()
    result = json.loads(body)
    columns = {m["config"].get("column") for m in result["metrics"]}
    assert {"amount", "category", "prediction"} <= columns


def test_report_of_columns_of_different_lengths_decides_as_drift() -> None:
    """Windows keep per-column counts (a missing value leaves one column short): the report pads with NaN,
    which Evidently drops, so its numbers are still ours."""
    rng = np.random.default_rng(8)
    types = {"a": "num", "b": "num", "c": "cat"}
    ref = {"a": Dist.of(rng.normal(size=1200)), "b": Dist.of(rng.normal(size=900)),
           "c": Dist.of(rng.integers(0, 3, 1100).astype(float))}
    cur = {"a": Dist.of(rng.normal(0.3, 1, 500)), "b": Dist.of(rng.normal(size=650)),
           "c": Dist.of(rng.integers(0, 4, 600).astype(float))}
    _, body = render_report(ref, cur, types, drift_share=0.3)
    theirs = read_drift(json.loads(body), types)
    ours = drift(ref, cur, types, drift_share=0.3)
    assert [(t.stattest, t.drifted) for t in ours[0]] == [(t.stattest, t.drifted) for t in theirs[0]]
    for o, t in zip(ours[0], theirs[0], strict=True):
        assert math.isclose(o.score, t.score, rel_tol=1e-9, abs_tol=1e-6)
    assert ours[1:] == theirs[1:] and ours[2]
