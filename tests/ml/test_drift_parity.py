"""Loopline's drift statistics against Evidently 0.7's ``DataDriftPreset`` on the same data: the same test per
column, the same scores to 1e-6, the same decisions, the same dataset share and decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from loopline_ml.drift import ColumnTest, Dist, drift, drift_arrays
from loopline_ml.evidently_report import read_drift, run_preset

TYPES = {"cont": "num", "shifted": "num", "few": "num", "mid": "num", "binary": "num", "skewed": "num",
         "cat": "cat", "cat_new": "cat", "cat_bin": "cat"}
NUM = [c for c, k in TYPES.items() if k == "num"]
CAT = [c for c, k in TYPES.items() if k == "cat"]


def frames(seed: int, n_ref: int, n_cur: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Reference and current columns: continuous, a shifted mean, few distinct values, 6-20 distinct
    values, binary, a heavy tail, categories (one new in current), binary categories."""
    rng = np.random.default_rng(seed)

    def cols(n: int, current: bool) -> dict[str, np.ndarray]:
        shift = 0.4 if current else 0.0
        return {
            "cont": rng.normal(0, 1, n),
            "shifted": rng.normal(shift, 1, n),
            "few": rng.integers(0, 4 + current, n).astype(float),
            "mid": rng.integers(0, 12, n).astype(float),
            "binary": (rng.random(n) < (0.3 + 0.05 * current)).astype(float),
            "skewed": np.round(rng.lognormal(0, 1 + 0.2 * current, n), 2),
            "cat": rng.choice(6, n, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]).astype(float),
            "cat_new": rng.integers(0, 5 + 2 * current, n).astype(float),
            "cat_bin": rng.integers(0, 2, n).astype(float),
        }

    return cols(n_ref, False), cols(n_cur, True)


def assert_same(ours: tuple[list[ColumnTest], float, bool], theirs: tuple[list[ColumnTest], float, bool]) -> None:
    by_column = {t.column: t for t in theirs[0]}
    assert {t.column for t in ours[0]} == set(by_column)
    for t in ours[0]:
        e = by_column[t.column]
        assert (t.stattest, t.threshold, t.drifted) == (e.stattest, e.threshold, e.drifted), (t, e)
        assert math.isclose(t.score, e.score, rel_tol=1e-9, abs_tol=1e-6), (t, e)
    assert math.isclose(ours[1], theirs[1]) and ours[2] == theirs[2]


def evidently(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray],
              per_column: dict[str, str] | None = None) -> tuple[list[ColumnTest], float, bool]:
    return read_drift(run_preset(ref, cur, TYPES, per_column).dict(), TYPES)


@pytest.mark.parametrize(("seed", "n_ref", "n_cur"), [(1, 600, 500), (2, 900, 1100), (3, 3000, 2500),
                                                      (4, 12000, 800), (5, 400, 11000)])
def test_default_stattests_equal_evidently(seed: int, n_ref: int, n_cur: int) -> None:
    ref, cur = frames(seed, n_ref, n_cur)
    ours = drift({c: Dist.of(ref[c]) for c in TYPES}, {c: Dist.of(cur[c]) for c in TYPES}, TYPES)
    theirs = evidently(ref, cur)
    assert_same(ours, theirs)
    # the array fast path (raw columns, no Dist) too
    names = list(TYPES)
    fast = drift_arrays(np.column_stack([ref[c] for c in names]), np.column_stack([cur[c] for c in names]),
                        names, TYPES)
    assert_same(fast, theirs)


FORCED = [
    {"cont": "psi", "shifted": "kl_div", "few": "jensenshannon", "mid": "ks", "skewed": "wasserstein",
     "cat": "psi", "cat_new": "chisquare", "cat_bin": "jensenshannon", "binary": "kl_div"},
    {"cont": "ks", "shifted": "wasserstein", "few": "psi", "mid": "kl_div", "skewed": "jensenshannon",
     "cat": "kl_div", "cat_new": "jensenshannon", "cat_bin": "chisquare", "binary": "psi"},
    {"cont": "jensenshannon", "shifted": "psi", "few": "kl_div", "mid": "wasserstein", "skewed": "ks",
     "cat": "chisquare", "cat_new": "psi", "cat_bin": "kl_div", "binary": "jensenshannon"},
]


@pytest.mark.parametrize(("seed", "n_ref", "n_cur"), [(11, 700, 600), (12, 4000, 3000)])
@pytest.mark.parametrize("forced", range(len(FORCED)))
def test_forced_stattests_equal_evidently(seed: int, n_ref: int, n_cur: int, forced: int) -> None:
    ref, cur = frames(seed, n_ref, n_cur)
    methods = FORCED[forced]
    ours = drift({c: Dist.of(ref[c]) for c in TYPES}, {c: Dist.of(cur[c]) for c in TYPES}, TYPES,
                 stattests=methods)
    theirs = evidently(ref, cur, methods)
    assert_same(ours, theirs)
    assert {t.column: t.stattest for t in ours[0]} == methods
    names = list(TYPES)
    fast = drift_arrays(np.column_stack([ref[c] for c in names]), np.column_stack([cur[c] for c in names]),
                        names, TYPES, stattests=methods)
    assert_same(fast, theirs)


def test_dataset_drift_share_rule_equals_evidently() -> None:
    """Exactly half the columns drifted: Evidently calls that dataset drift (share >= drift_share)."""
    rng = np.random.default_rng(7)
    ref = {"a": rng.normal(0, 1, 2000), "b": rng.normal(0, 1, 2000)}
    cur = {"a": rng.normal(2, 1, 2000), "b": rng.normal(0, 1, 2000)}
    types = {"a": "num", "b": "num"}
    ours = drift({c: Dist.of(v) for c, v in ref.items()}, {c: Dist.of(v) for c, v in cur.items()}, types)
    theirs = read_drift(run_preset(ref, cur, types).dict(), types)
    assert ours[1] == 0.5 and ours[2] is True
    assert_same(ours, theirs)
