"""The promotion gate (in the manner of TFX's Evaluator): absolute thresholds on the candidate, and
limits on how much worse than the champion it may be on the same test rows. Pure.

A gate is evidence: every check keeps its value, the champion's value, the threshold and why it
passed, and the verdict carries the digest of the rules it was reached under.
"""

from __future__ import annotations

from loopline.registry.v1 import registry_pb2 as pb

from loopline_ml.evaluation import SliceResult
from loopline_ml.spec import ChangeCheck, GateSpec


def _better_by(direction: str, value: float, baseline: float) -> float:
    """How much better ``value`` is than ``baseline`` (negative: worse), whatever the metric's direction."""
    return value - baseline if direction == "higher" else baseline - value


def evaluate_gate(spec: GateSpec, results: list[SliceResult], *, min_slice_rows: int,
                  champion_version: int = 0, champion_error: str = "") -> pb.Gate:
    """Judge a candidate from its evaluation (``results[0]`` is the whole test set).

    No champion (``champion_version`` 0 and no error): change checks are recorded as skipped and pass.
    A champion that could not be evaluated (``champion_error``): change checks fail closed.
    """
    overall = results[0]
    checks: list[pb.GateCheck] = []
    for a in spec.absolute:
        value = overall.metrics.get(a.metric)
        baseline = overall.champion_metrics.get(a.metric, 0.0)
        if value is None:
            checks.append(pb.GateCheck(metric=a.metric, kind="absolute", threshold=a.threshold, passed=False,
                                       baseline=baseline, detail="undefined on the test set (one class)"))
            continue
        ok = value >= a.threshold if a.direction == "higher" else value <= a.threshold
        op = ">=" if a.direction == "higher" else "<="
        checks.append(pb.GateCheck(metric=a.metric, kind="absolute", threshold=a.threshold, value=value,
                                   baseline=baseline, passed=ok,
                                   detail=f"{value:.4f} {op} {a.threshold:g} ({a.direction} is better)"))
    for c in spec.change:
        checks += _change(c, results, min_slice_rows, champion_version, champion_error)
    failed = [c for c in checks if not c.passed]
    if failed:
        summary = f"failed {len(failed)} of {len(checks)} checks: " + "; ".join(
            f"{c.metric}{' on ' + c.slice if c.slice else ''}: {c.detail}" for c in failed[:3])
    else:
        summary = f"passed {len(checks)} checks" + ("" if champion_version or champion_error
                                                    else " (no champion: change checks skipped)")
    if champion_version and not champion_error:
        summary += f" against champion v{champion_version}"
    return pb.Gate(passed=not failed, checks=checks, champion_version=champion_version,
                   config_digest=spec.digest(), summary=summary)


def _change(c: ChangeCheck, results: list[SliceResult], min_slice_rows: int, champion_version: int,
            champion_error: str) -> list[pb.GateCheck]:
    kind = "slice_change" if c.per_slice else "change"
    threshold = -c.max_worsening
    if champion_error:
        return [pb.GateCheck(metric=c.metric, kind=kind, threshold=threshold, passed=False,
                             detail=f"failed closed: champion v{champion_version} could not be evaluated "
                                    f"({champion_error})")]
    if not champion_version:
        return [pb.GateCheck(metric=c.metric, kind=kind, threshold=threshold, passed=True,
                             detail="skipped: no champion to compare with")]
    targets = [r for r in results[1:] if r.rows >= min_slice_rows and r.gated] if c.per_slice else results[:1]
    out = []
    for r in targets:
        value, baseline = r.metrics.get(c.metric), r.champion_metrics.get(c.metric)
        if value is None or baseline is None:
            continue
        delta = _better_by(c.direction, value, baseline)
        out.append(pb.GateCheck(metric=c.metric, slice=r.slice, kind=kind, threshold=threshold, value=value,
                                baseline=baseline, passed=delta >= threshold,
                                detail=f"{delta:+.4f} vs champion v{champion_version}, may be worse by at most "
                                       f"{c.max_worsening:g} ({c.direction} is better)"))
    if not out:
        out.append(pb.GateCheck(metric=c.metric, kind=kind, threshold=threshold, passed=True,
                                detail=f"skipped: no slice with >= {min_slice_rows} rows and both classes"
                                if c.per_slice else "skipped: undefined on the test set"))
    return out
