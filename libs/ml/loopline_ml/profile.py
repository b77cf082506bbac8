"""The reference profile of a model version: what its training window looked like, column by column.

The trainer computes it from the rows it trained on and stores it, signed, in the artifact as
``reference.json``; the monitor reads it back as the reference its windows are tested against. Each column
keeps its exact distribution (:class:`~loopline_ml.drift.Dist`), so the monitor's statistics are Evidently's
on the training rows themselves, plus quantiles and moments for people and for range checks. Above
``max_rows`` rows the profile describes a seeded random subsample, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopline_ml.drift import Dist

VERSION = 2
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def build_profile(x: np.ndarray, names: list[str], types: Mapping[str, str], scores: np.ndarray | None,
                  monitoring: dict[str, Any] | None = None, max_rows: int = 50_000, seed: int = 0
                  ) -> dict[str, Any]:
    """The JSON-able profile of ``x`` (rows by ``names``) and the model's ``scores`` on the same rows.

    Non-finite values are left out of a column's distribution and counted as ``missing``. Above
    ``max_rows`` rows the same seeded subsample of rows is taken for every column and the scores.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"expected rows of {len(names)} columns, got shape {x.shape}")
    if scores is not None and len(scores) != x.shape[0]:
        raise ValueError(f"{len(scores)} scores for {x.shape[0]} rows")
    rows = x.shape[0]
    sampled = rows > max_rows
    if sampled:
        keep = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
        x = x[keep]
        scores = None if scores is None else np.asarray(scores)[keep]
    profile: dict[str, Any] = {
        "version": VERSION,
        "rows": rows,
        "profiled_rows": x.shape[0],
        "sampled": sampled,
        "quantile_levels": list(QUANTILES),
        "columns": {name: column_profile(x[:, i], types[name]) for i, name in enumerate(names)},
        "prediction": None if scores is None else column_profile(np.asarray(scores, np.float64), "num"),
        "monitoring": monitoring or {},
    }
    if sampled:
        profile["seed"] = seed
    return profile


def column_profile(col: np.ndarray, column_type: str) -> dict[str, Any]:
    """One column: its type, exact distribution, quantiles and moments (categories for ``cat``)."""
    if column_type not in ("num", "cat"):
        raise ValueError(f"column type must be 'num' or 'cat', got {column_type!r}")
    finite = col[np.isfinite(col)]
    dist = Dist.of(finite)
    out: dict[str, Any] = {"type": column_type, "dist": dist.to_json(), "missing": int(col.size - finite.size)}
    if finite.size:
        out |= {"quantiles": np.quantile(finite, QUANTILES).tolist(),  # at the profile's quantile_levels
                "mean": float(finite.mean()), "std": float(finite.std()),
                "min": float(finite.min()), "max": float(finite.max())}
    if column_type == "cat":
        out["categories"] = {_key(v): int(c) for v, c in zip(dist.values, dist.counts, strict=True)}
    return out


def _key(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class Profile:
    """A stored profile, read back: what the monitor needs to test windows against it."""

    rows: int
    types: dict[str, str]
    dists: dict[str, Dist]
    prediction: Dist | None
    monitoring: dict[str, Any]
    sampled: bool = False
    quantiles: dict[str, dict[float, float]] = field(default_factory=dict)
    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)


def load_profile(d: Mapping[str, Any]) -> Profile:
    """A profile from its JSON form (as :func:`build_profile` wrote it)."""
    if d.get("version") != VERSION:
        raise ValueError(f"reference profile version {d.get('version')!r}, expected {VERSION}")
    columns: dict[str, Any] = d["columns"]
    pred = d.get("prediction")
    levels = [float(q) for q in d.get("quantile_levels", QUANTILES)]
    return Profile(
        rows=int(d["rows"]),
        types={name: c["type"] for name, c in columns.items()},
        dists={name: Dist.from_json(c["dist"]) for name, c in columns.items()},
        prediction=None if pred is None else Dist.from_json(pred["dist"]),
        monitoring=dict(d.get("monitoring") or {}),
        sampled=bool(d.get("sampled", False)),
        quantiles={name: dict(zip(levels, map(float, c["quantiles"]), strict=True))
                   for name, c in columns.items() if "quantiles" in c},
        min={name: float(c["min"]) for name, c in columns.items() if "min" in c},
        max={name: float(c["max"]) for name, c in columns.items() if "max" in c},
    )
