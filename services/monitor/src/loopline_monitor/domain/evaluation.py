"""What one evaluated window says: drift, data quality, latency, errors, performance. Pure.

Each check yields a :class:`Finding` (crossed or not, with a severity), and the alert episodes
(:mod:`.alerting`) turn a run of findings into alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loopline_ml.drift import ColumnTest, column_drift, drift
from loopline_ml.evaluation import calibration_error, metrics
from loopline_ml.profile import Profile

from loopline_monitor.domain.windows import Snapshot, latency_quantile


@dataclass(frozen=True)
class Limits:
    """Thresholds of the rate checks: (warning, critical)."""

    quality: tuple[float, float] = (0.05, 0.2)
    latency_p95_ms: tuple[float, float] = (100.0, 500.0)
    error_rate: tuple[float, float] = (0.02, 0.1)


@dataclass(frozen=True)
class Finding:
    kind: str
    crossed: bool
    severity: str
    metric: str
    value: float
    threshold: float
    summary: str
    columns: list[ColumnTest] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluated:
    findings: list[Finding]
    columns: list[ColumnTest]
    prediction: ColumnTest | None
    drift_share: float
    dataset_drift: bool
    metrics: dict[str, float]


def rate(kind: str, metric: str, value: float, limits: tuple[float, float], what: str) -> Finding:
    severity = "critical" if value >= limits[1] else "warning"
    crossed = value >= limits[0]
    threshold = limits[1] if severity == "critical" else limits[0]
    return Finding(kind, crossed, severity if crossed else "", metric, value, threshold,
                   f"{what} {value:.3g} >= {threshold:g}" if crossed else f"{what} {value:.3g}")


def evaluate_window(snap: Snapshot, profile: Profile, limits: Limits, rejected: int = 0) -> Evaluated:
    """Drift of every column and of the predictions against the version's own training profile (as
    Evidently's data drift preset decides it), and the window's rates. ``rejected``: predictions of this
    version dead-lettered since the last evaluation (missing or non-finite values)."""
    mon: Mapping[str, Any] = profile.monitoring
    share_needed = float(mon.get("drift_share", 0.5))
    critical_share = float(mon.get("critical_share", 0.75))
    names = [n for n in profile.types if n in snap.columns and snap.columns[n].n]  # all rows failed: nothing to test
    tests, share, dataset = drift({n: profile.dists[n] for n in names}, {n: snap.columns[n] for n in names},
                                  {n: profile.types[n] for n in names}, drift_share=share_needed)
    drifted = sorted((t for t in tests if t.drifted), key=lambda t: t.column)
    severity = "critical" if share >= critical_share else "warning"
    findings = [Finding(
        "feature_drift", dataset, severity if dataset else "", "drift_share", share,
        critical_share if severity == "critical" and dataset else share_needed,
        f"{len(drifted)} of {len(tests)} columns drifted ({', '.join(t.column for t in drifted) or 'none'}): "
        f"share {share:.2f} {'>=' if dataset else '<'} {share_needed:g}", tests)]
    prediction: ColumnTest | None = None
    if profile.prediction is not None and snap.prediction.n:
        prediction = column_drift("prediction", profile.prediction, snap.prediction, "num")
        findings.append(Finding("prediction_drift", prediction.drifted, "warning" if prediction.drifted else "",
                                prediction.stattest, prediction.score, prediction.threshold,
                                f"predictions {prediction.stattest} {prediction.score:.3g} "
                                f"({'drifted' if prediction.drifted else 'stable'})", [prediction]))
    size = max(snap.size + rejected, 1)
    quality = (snap.out_of_range + rejected + _unseen(snap, profile)) / size
    p95 = latency_quantile(snap.latency, 0.95)
    errors = snap.failed / max(snap.size, 1)
    findings += [rate("data_quality", "bad_value_rate", quality, limits.quality,
                       "rows with missing, non-finite, out-of-range or unseen values"),
                 rate("latency", "latency_p95_ms", p95, limits.latency_p95_ms, "p95 latency (ms)"),
                 rate("error_rate", "error_rate", errors, limits.error_rate, "error rate")]
    figures = {"drift_share": share, "bad_value_rate": quality, "latency_p95_ms": p95, "error_rate": errors,
               "out_of_range_rate": snap.out_of_range / max(snap.size, 1), "rejected": float(rejected)}
    return Evaluated(findings, tests, prediction, share, dataset, figures)


def _unseen(snap: Snapshot, profile: Profile) -> int:
    """Rows' values of categorical columns that the reference never saw (a new category)."""
    out = 0
    for name, kind in profile.types.items():
        if kind == "cat" and name in snap.columns:
            cur = snap.columns[name]
            seen = set(profile.dists[name].values.tolist())
            out += int(sum(c for v, c in zip(cur.values.tolist(), cur.counts.tolist(), strict=True) if v not in seen))
    return out


@dataclass(frozen=True)
class Labelled:
    """The newest labelled predictions of a version (or of one of its variants)."""

    y: np.ndarray
    score: np.ndarray
    delay_s: np.ndarray


def performance(rows: Labelled, monitoring: Mapping[str, Any], predicted: int) -> tuple[dict[str, float],
                                                                                        list[Finding]]:
    """Metrics over labelled rows at the deployed threshold, label coverage and delay, and one finding per
    declared performance check (undefined metrics, e.g. AUC with one class, are left out and not checked)."""
    y, p = rows.y.astype(float), np.clip(rows.score.astype(float), 0.0, 1.0)
    threshold = float(monitoring.get("threshold", 0.5))
    out = {k: v for k, v in metrics(y, p, 0.01).items() if k in ("auc_roc", "auc_pr", "log_loss")}
    out["calibration_error"] = calibration_error(y, p)
    pred = p >= threshold
    if pred.any():
        out["precision"] = float((pred & (y == 1)).sum() / pred.sum())
    if (y == 1).any():
        out["recall"] = float((pred & (y == 1)).sum() / (y == 1).sum())
    out["labelled"] = float(len(y))
    out["label_coverage"] = min(1.0, len(y) / predicted) if predicted else 0.0
    out["label_delay_p50_s"] = float(np.median(rows.delay_s)) if len(rows.delay_s) else 0.0
    findings = []
    for check in monitoring.get("performance", []):
        metric = check["metric"]
        if metric not in out:
            continue
        value, higher = out[metric], check["direction"] == "higher"
        severity = "critical" if _worse(value, check["critical"], higher) else \
            "warning" if _worse(value, check["warning"], higher) else ""
        threshold = check["critical"] if severity == "critical" else check["warning"]
        findings.append(Finding("performance", bool(severity), severity, metric, value, threshold,
                                f"{metric} {value:.3f} {'<' if higher else '>'} {threshold:g} over {len(y)} "
                                f"labelled predictions" if severity else f"{metric} {value:.3f}"))
    return out, findings


def _worse(value: float, threshold: float, higher_is_better: bool) -> bool:
    return value < threshold if higher_is_better else value > threshold
