"""Test-set metrics of a scorer, overall and per slice. Pure (numpy + scikit-learn).

A metric that is undefined on a slice (AUC on a slice with one class) is left out, not faked: the
gate then has nothing to compare there, and the card shows a blank rather than a made-up number.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from loopline_ml.spec import Band, Evaluation

METRICS = ("auc_roc", "auc_pr", "recall_at_fpr", "log_loss", "calibration_error", "precision", "recall")
LOWER_IS_BETTER = frozenset({"log_loss", "calibration_error"})
_EPS = 1e-7


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over equal-width probability bins, the row-weighted gap between the
    mean score and the observed fraud rate."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += float(m.sum()) * abs(float(p[m].mean()) - float(y[m].mean()))
    return total / len(y)


def recall_at_fpr(y: np.ndarray, p: np.ndarray, fpr: float) -> float:
    """True-positive rate where the ROC curve crosses ``fpr`` (linear interpolation between its points)."""
    f, t, _ = roc_curve(y, p)
    return float(np.interp(fpr, f, t))


def metrics(y: np.ndarray, p: np.ndarray, fpr: float) -> dict[str, float]:
    """Every metric defined for these labels and scores (probabilities in [0, 1])."""
    y = np.asarray(y, dtype=float).ravel()
    p = np.clip(np.asarray(p, dtype=float).ravel(), 0.0, 1.0)
    if len(y) == 0:
        return {}
    out: dict[str, float] = {}
    positives = float(y.sum())
    if 0 < positives < len(y):
        out["auc_roc"] = float(roc_auc_score(y, p))
        out["auc_pr"] = float(average_precision_score(y, p))
        out["recall_at_fpr"] = recall_at_fpr(y, p, fpr)
    with warnings.catch_warnings():  # one-class slices: log loss is still defined given both labels
        warnings.simplefilter("ignore")
        out["log_loss"] = float(log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0.0, 1.0]))
    out["calibration_error"] = calibration_error(y, p)
    pred = p >= 0.5
    if pred.any():
        out["precision"] = float((pred & (y == 1)).sum() / pred.sum())
    if positives:
        out["recall"] = float((pred & (y == 1)).sum() / positives)
    return out


def band_label(value: float, edges: list[float]) -> str:
    if value < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in itertools.pairwise(edges):
        if value < hi:
            return f"{lo:g}-{hi:g}"
    return f"{edges[-1]:g}+"


def slice_masks(columns: Mapping[str, np.ndarray], spec: Evaluation) -> dict[str, np.ndarray]:
    """Named boolean masks, in a stable order: ``column=value`` for each string column, ``band=lo-hi`` for
    each band. Columns the data lacks are skipped (a view without them still gets overall metrics)."""
    out: dict[str, np.ndarray] = {}
    for col in spec.slices:
        if col not in columns:
            continue
        values = np.asarray(columns[col]).astype(str)
        for v in sorted(set(values.tolist())):
            out[f"{col}={v}"] = values == v
    for band in spec.bands:
        if band.feature not in columns:
            continue
        labels = _bands(np.asarray(columns[band.feature], dtype=float), band)
        for label in _band_order(band):
            m = labels == label
            if m.any():
                out[f"{band.name}={label}"] = m
    return out


def _bands(values: np.ndarray, band: Band) -> np.ndarray:
    return np.array([band_label(float(v), band.edges) for v in values])


def _band_order(band: Band) -> list[str]:
    e = band.edges
    return [f"<{e[0]:g}", *[f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(e)], f"{e[-1]:g}+"]


@dataclass
class SliceResult:
    slice: str
    """"" for the whole test set."""
    rows: int
    positives: int
    metrics: dict[str, float]
    champion_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def gated(self) -> bool:
        return bool(self.rows and 0 < self.positives < self.rows)


def evaluate(y: np.ndarray, p: np.ndarray, masks: Mapping[str, np.ndarray], fpr: float,
             champion: np.ndarray | None = None) -> list[SliceResult]:
    """Overall (slice "") then one result per mask; with ``champion`` scores, the same metrics for them."""
    y = np.asarray(y, dtype=float).ravel()
    everything = np.ones(len(y), dtype=bool)
    out = []
    for name, m in [("", everything), *masks.items()]:
        r = SliceResult(name, int(m.sum()), int(y[m].sum()), metrics(y[m], np.asarray(p).ravel()[m], fpr))
        if champion is not None:
            r.champion_metrics = metrics(y[m], np.asarray(champion).ravel()[m], fpr)
        out.append(r)
    return out
