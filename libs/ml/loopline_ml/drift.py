"""Drift statistics equal to Evidently 0.7's ``DataDriftPreset``, computed from exact distributions.

Every statistic here is the one Evidently's legacy stattests compute (``evidently.legacy.calculations.
stattests``), rebuilt on a :class:`Dist` (distinct values and their counts) instead of a pandas Series: the
same default test per column (by reference size, type and number of distinct values), the same binning for
PSI, KL and Jensen-Shannon (Sturges bins on the pooled data above 20 distinct reference values, otherwise one
bin per value; zero shares filled as Evidently's ``feel_zeroes`` does), the same thresholds and the same
direction of each drift decision, and the same dataset rule (share of drifted columns >= ``drift_share``).
A count-weighted statistic is the raw-sample statistic exactly, so a window kept as counts gives Evidently's
numbers without its rows. ``tests/ml`` pins the parity to 1e-6 against Evidently itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance
from scipy.stats import _stats_py

# name -> (Evidently's default threshold, column types it accepts when chosen by name)
STATTESTS: dict[str, tuple[float, frozenset[str]]] = {
    "ks": (0.05, frozenset({"num"})),
    "wasserstein": (0.1, frozenset({"num"})),
    "chisquare": (0.05, frozenset({"cat"})),
    "z": (0.05, frozenset({"cat"})),
    "psi": (0.1, frozenset({"num", "cat"})),
    "kl_div": (0.1, frozenset({"num", "cat"})),
    "jensenshannon": (0.1, frozenset({"num", "cat"})),
}
# Evidently's display names (what a report shows for an auto-chosen test) -> the names above
DISPLAY_NAMES = {"K-S p_value": "ks", "Wasserstein distance (normed)": "wasserstein",
                 "chi-square p_value": "chisquare", "Z-test p_value": "z", "PSI": "psi",
                 "Kullback-Leibler divergence": "kl_div", "Jensen-Shannon distance": "jensenshannon"}
_KS_EXACT_MAX_N = 10_000  # scipy's ks_2samp(method="auto") is exact up to this sample size
_BINS_ABOVE = 20  # Evidently bins numeric columns with more distinct reference values than this


@dataclass(frozen=True)
class Dist:
    """A column's exact distribution: its distinct finite values (sorted, float64) and how often each occurs
    (int64). Equivalent to the raw sample for every statistic below, but mergeable and small for discrete
    columns."""

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Dist:
        """From raw values (the caller drops non-finite ones)."""
        return cls.of_sorted(np.sort(np.asarray(x, dtype=np.float64).ravel()))

    @classmethod
    def of_sorted(cls, s: np.ndarray) -> Dist:
        """From raw values already sorted: one pass, no second sort."""
        if s.size == 0:
            return cls(np.empty(0, np.float64), np.empty(0, np.int64))
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        counts = np.diff(np.append(starts, s.size)).astype(np.int64)
        return cls(s[starts], counts)

    @classmethod
    def from_counts(cls, counts: Mapping[float, int]) -> Dist:
        """From a ``{value: count}`` mapping; zero counts are dropped."""
        items = sorted((float(v), int(c)) for v, c in counts.items() if c)
        return cls(np.array([v for v, _ in items], np.float64), np.array([c for _, c in items], np.int64))

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def sample(self) -> np.ndarray:
        """The raw sample back (sorted)."""
        return np.repeat(self.values, self.counts)

    def merge(self, other: Dist) -> Dist:
        """Both samples together."""
        u, inv = np.unique(np.concatenate((self.values, other.values)), return_inverse=True)
        counts = np.zeros(u.size, np.int64)
        np.add.at(counts, inv, np.concatenate((self.counts, other.counts)))
        return Dist(u, counts)

    def mean(self) -> float:
        return float(np.dot(self.values, self.counts) / self.n)

    def std(self) -> float:
        """Population standard deviation (numpy's ``std``, ddof 0)."""
        dev = self.values - self.mean()
        return math.sqrt(float(np.dot(dev * dev, self.counts) / self.n))

    def to_json(self) -> dict[str, Any]:
        return {"values": self.values.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Dist:
        return cls(np.asarray(d["values"], np.float64), np.asarray(d["counts"], np.int64))


@dataclass(frozen=True)
class ColumnTest:
    """One column's drift test as Evidently reports it."""

    column: str
    column_type: str  # "num" | "cat"
    stattest: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class _Pair:
    """Reference and current counts aligned on the union of their distinct values."""

    union: np.ndarray
    ref: np.ndarray
    cur: np.ndarray
    ref_n: int
    cur_n: int
    ref_unique: int
    ref_std: float | None = None  # known up front for a raw sample: numpy's own std, as Evidently takes it


def _pair(ref: Dist, cur: Dist) -> _Pair:
    return _merge(ref.values, ref.counts, cur.values, cur.counts)


def _merge(ref_values: np.ndarray, ref_counts: np.ndarray | None, cur_values: np.ndarray,
           cur_counts: np.ndarray | None) -> _Pair:
    """Align two sorted value lists (counts None: each value once, a raw sorted sample). A stable argsort of
    two sorted runs is one merge (timsort), and it tells which side each value came from; equal neighbours
    are then folded into one slot."""
    both = np.concatenate((ref_values, cur_values))
    order = np.argsort(both, kind="stable")
    merged = both[order]
    from_ref = order < ref_values.size
    if ref_counts is None or cur_counts is None:
        r = from_ref.astype(np.int64)
        c = 1 - r
        ref_n, cur_n = ref_values.size, cur_values.size
        ref_std = float(np.std(ref_values)) if ref_n else 0.0
        ref_unique = 1 + int(np.count_nonzero(ref_values[1:] != ref_values[:-1])) if ref_values.size else 0
    else:
        counts = np.concatenate((ref_counts, cur_counts))[order]
        r = np.where(from_ref, counts, 0)
        c = counts - r
        ref_n, cur_n = int(ref_counts.sum()), int(cur_counts.sum())
        ref_unique = ref_values.size
        ref_std = None
    first = np.flatnonzero(np.concatenate(([True], merged[1:] != merged[:-1])))
    if first.size < merged.size:  # values on both sides (or repeated in a raw sample): one slot each
        merged, r, c = merged[first], np.add.reduceat(r, first), np.add.reduceat(c, first)
    return _Pair(merged, r, c, ref_n, cur_n, ref_unique, ref_std)


def default_stattest(ref_n: int, n_values: int, column_type: str) -> str:
    """Evidently's choice (``registry._get_default_stattest``): by reference size, type and the number of
    distinct values in reference and current together."""
    if ref_n <= 1000:
        if column_type == "num" and n_values > 5:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if column_type == "num" and n_values > 5:
        return "wasserstein"
    return "jensenshannon"


def is_drifted(stattest: str, score: float, threshold: float) -> bool:
    """The direction of each test's decision, as Evidently writes it (KS: ``<=``; chi-squared, z: ``<``)."""
    if stattest == "ks":
        return score <= threshold
    if stattest in ("chisquare", "z"):
        return score < threshold
    return score >= threshold


def column_drift(column: str, ref: Dist, cur: Dist, column_type: str, stattest: str | None = None,
                 threshold: float | None = None) -> ColumnTest:
    """One column's drift test; ``stattest`` None picks Evidently's default, ``threshold`` None its default."""
    if column_type not in ("num", "cat"):
        raise ValueError(f"column type must be 'num' or 'cat', got {column_type!r}")
    if ref.n == 0 or cur.n == 0:
        raise ValueError(f"an empty column {column!r} was given for drift calculation")
    return _test(column, _pair(ref, cur), column_type, stattest, threshold)


def _test(column: str, p: _Pair, column_type: str, stattest: str | None, threshold: float | None) -> ColumnTest:
    if stattest is None:
        stattest = default_stattest(p.ref_n, p.union.size, column_type)
    elif stattest not in STATTESTS:
        raise ValueError(f"unknown stattest {stattest!r}; known: {', '.join(STATTESTS)}")
    elif column_type not in STATTESTS[stattest][1]:
        raise ValueError(f"stattest {stattest!r} does not apply to a {column_type} column")
    thr = STATTESTS[stattest][0] if threshold is None else threshold
    score = _SCORES[stattest](p, column_type)
    return ColumnTest(column, column_type, stattest, score, thr, is_drifted(stattest, score, thr))


def drift(ref: Mapping[str, Dist], cur: Mapping[str, Dist], types: Mapping[str, str], drift_share: float = 0.5,
          stattests: Mapping[str, str] | None = None) -> tuple[list[ColumnTest], float, bool]:
    """Every column's test (in ``types`` order), the share of drifted columns, and dataset drift (share >=
    ``drift_share``, Evidently's rule)."""
    chosen = stattests or {}
    tests = [column_drift(name, ref[name], cur[name], kind, chosen.get(name)) for name, kind in types.items()]
    return tests, *dataset_drift(tests, drift_share)


def dataset_drift(tests: Sequence[ColumnTest], drift_share: float = 0.5) -> tuple[float, bool]:
    share = sum(t.drifted for t in tests) / len(tests) if tests else 0.0
    return share, bool(tests) and share >= drift_share


def drift_arrays(ref: np.ndarray, cur: np.ndarray, names: list[str], types: Mapping[str, str],
                 drift_share: float = 0.5, stattests: Mapping[str, str] | None = None
                 ) -> tuple[list[ColumnTest], float, bool]:
    """:func:`drift` on raw ``(n, f)`` arrays, columns in ``names`` order; non-finite values are dropped per
    column, as Evidently does. Each column is sorted once; the two sorted columns are merged, not re-sorted."""
    ref_t = np.array(np.asarray(ref, dtype=np.float64).T, order="C")  # one copy; each column then sorts in place
    cur_t = np.array(np.asarray(cur, dtype=np.float64).T, order="C")
    chosen = stattests or {}
    tests = []
    for i, name in enumerate(names):
        a, b = _sorted_finite(ref_t[i]), _sorted_finite(cur_t[i])
        if types[name] not in ("num", "cat"):
            raise ValueError(f"column type must be 'num' or 'cat', got {types[name]!r}")
        if a.size == 0 or b.size == 0:
            raise ValueError(f"an empty column {name!r} was given for drift calculation")
        tests.append(_test(name, _merge(a, None, b, None), types[name], chosen.get(name), None))
    return tests, *dataset_drift(tests, drift_share)


def _sorted_finite(s: np.ndarray) -> np.ndarray:
    s.sort()  # in place; NaN sorts last and infinities at the ends, so the ends tell
    if s.size and not (np.isfinite(s[0]) and np.isfinite(s[-1])):
        s = s[np.isfinite(s)]
    return s


# ---- the statistics -------------------------------------------------------------------------------------

def _shares(p: _Pair, column_type: str, feel_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's ``get_binned_data`` with its default 30-bin argument unused (Sturges decides)."""
    if column_type == "num" and p.ref_unique > _BINS_ABOVE:
        edges = _sturges_edges(float(p.union[0]), float(p.union[-1]), p.ref_n + p.cur_n)
        ref_shares = _histogram(p.union, p.ref, edges) / p.ref_n
        cur_shares = _histogram(p.union, p.cur, edges) / p.cur_n
    else:
        ref_shares = p.ref / p.ref_n
        cur_shares = p.cur / p.cur_n
    if feel_zeroes:
        _fill_zeroes(ref_shares)
        _fill_zeroes(cur_shares)
    return ref_shares, cur_shares


def _sturges_edges(first: float, last: float, n: int) -> np.ndarray:
    """``np.histogram_bin_edges(pooled, bins="sturges")`` from the pooled data's min, max and size."""
    width = (last - first) / (np.log2(n) + 1.0)
    bins = int(np.ceil((last - first) / width))
    return np.linspace(first, last, bins + 1, endpoint=True)


def _histogram(values: np.ndarray, counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(sample, edges)`` counts from distinct values and their counts (last bin closed)."""
    cum = np.concatenate(([0], np.cumsum(counts)))
    at = np.concatenate((np.searchsorted(values, edges[:-1], "left"), np.searchsorted(values, edges[-1:], "right")))
    return np.diff(cum[at]).astype(np.float64)


def _fill_zeroes(shares: np.ndarray) -> None:
    smallest = float(shares[shares != 0].min())
    np.place(shares, shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)


def _psi(p: _Pair, column_type: str) -> float:
    r, c = _shares(p, column_type, feel_zeroes=True)
    return float(np.sum((r - c) * np.log(r / c)))


def _kl_div(p: _Pair, column_type: str) -> float:
    r, c = _shares(p, column_type, feel_zeroes=True)
    return float(stats.entropy(r, c))


def _jensenshannon(p: _Pair, column_type: str) -> float:
    r, c = _shares(p, column_type, feel_zeroes=False)
    return float(distance.jensenshannon(r, c))


def _wasserstein(p: _Pair, _column_type: str) -> float:
    """scipy's ``wasserstein_distance`` (the integral of |U - V|) over the reference std, floored at 0.001."""
    gaps = _ecdf_gaps(p)[:-1]
    np.abs(gaps, out=gaps)
    gaps *= np.diff(p.union)
    return float(gaps.sum() / max(_ref_std(p), 0.001))


def _ref_std(p: _Pair) -> float:
    if p.ref_std is not None:
        return p.ref_std
    mean = float(np.dot(p.union, p.ref)) / p.ref_n
    dev = p.union - mean
    dev *= dev
    return math.sqrt(float(np.dot(dev, p.ref)) / p.ref_n)


def _ecdf_gaps(p: _Pair) -> np.ndarray:
    """U - V at every distinct value; counts are integers, so the float cumsums are exact."""
    u = np.cumsum(p.ref, dtype=np.float64)
    u /= p.ref_n
    v = np.cumsum(p.cur, dtype=np.float64)
    v /= p.cur_n
    u -= v
    return u


def _ks(p: _Pair, _column_type: str) -> float:
    """The p-value of scipy's two-sided ``ks_2samp`` (method ``auto``) from the ECDFs' largest gap."""
    gaps = _ecdf_gaps(p)
    d = max(float(np.clip(-gaps.min(), 0, 1)), float(gaps.max()))
    return ks_pvalue(d, p.ref_n, p.cur_n)


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """What ``scipy.stats.ks_2samp(x, y)`` (two-sided, method auto) returns as p-value for a statistic ``d``
    and sizes ``n1``, ``n2``: exact up to 10,000 rows (falling back as scipy does), else Smirnov's
    asymptotic distribution."""
    prob = math.nan
    exact = max(n1, n2) <= _KS_EXACT_MAX_N
    if exact:  # scipy goes on with the statistic rounded to the lattice even when the exact sum fails
        with np.errstate(all="ignore"):
            exact, d, prob = _stats_py._attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
    if not exact:
        m, n = sorted([float(n1), float(n2)], reverse=True)
        prob = float(stats.kstwo.sf(d, np.round(m * n / (m + n))))
    return float(np.clip(prob, 0, 1))


def _chisquare(p: _Pair, _column_type: str) -> float:
    f_exp = p.ref * (p.cur_n / p.ref_n)
    with np.errstate(divide="ignore", invalid="ignore"):  # a category new in current: expected 0, p 0
        return float(stats.chisquare(p.cur.astype(np.float64), f_exp)[1])


def _z(p: _Pair, _column_type: str) -> float:
    """Two-proportion z-test on 'not the smallest value', as Evidently's ``_z_stat_test``."""
    if p.union.size == 1:
        return 1.0
    n1, n2 = p.ref_n, p.cur_n
    p1 = float(n1 - p.ref[0]) / n1
    p2 = float(n2 - p.cur[0]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


_SCORES = {"ks": _ks, "wasserstein": _wasserstein, "chisquare": _chisquare, "z": _z, "psi": _psi,
           "kl_div": _kl_div, "jensenshannon": _jensenshannon}
