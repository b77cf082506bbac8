"""Drift statistics against a training reference. Pure numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-4


def reference(x: np.ndarray, feature_names: list[str], bins: int = 10) -> dict[str, Any]:
    """Per feature: quantile bin edges of the training data and the share of rows in each bin."""
    out: dict[str, Any] = {}
    for i, name in enumerate(feature_names):
        col = x[:, i].astype(np.float64)
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
        out[name] = {"edges": edges.tolist(), "shares": _shares(col, edges).tolist()}
    return out


def _shares(col: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
    return counts / max(len(col), 1)


def psi(ref: dict[str, Any], x: np.ndarray, feature_names: list[str]) -> dict[str, float]:
    """Population Stability Index per feature of ``x`` against ``ref`` (0 = same; > 0.2 = shifted)."""
    scores: dict[str, float] = {}
    for i, name in enumerate(feature_names):
        if name not in ref:
            continue
        edges = np.asarray(ref[name]["edges"], dtype=np.float64)
        expected = np.clip(np.asarray(ref[name]["shares"]), EPS, None)
        actual = np.clip(_shares(x[:, i].astype(np.float64), edges), EPS, None)
        scores[name] = float(np.sum((actual - expected) * np.log(actual / expected)))
    return scores


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties averaged); 0.5 when one class is absent."""
    y = np.asarray(y).ravel().astype(bool)
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
