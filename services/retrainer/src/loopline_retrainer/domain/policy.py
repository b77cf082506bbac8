"""Retraining and promotion policy. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def may_request(in_flight_age_s: float | None, since_last_done_s: float | None, *, in_flight_timeout_s: float,
                cooldown_s: float) -> tuple[bool, str]:
    """At most one run in flight per model, and a cool-down after each finished run."""
    if in_flight_age_s is not None and in_flight_age_s < in_flight_timeout_s:
        return False, f"a training run is already in flight ({in_flight_age_s:.0f}s)"
    if since_last_done_s is not None and since_last_done_s < cooldown_s:
        return False, f"cooling down ({since_last_done_s:.0f}s since the last run, need {cooldown_s:.0f}s)"
    return True, "ok"


def decide(metrics: dict[str, float], has_champion: bool, min_gain: float) -> Decision:
    """Promote when there is no champion, or the challenger beats it on the same (most recent) test set."""
    if not has_champion:
        return Decision(True, "first version: no champion yet")
    if "champion_auc" not in metrics:
        return Decision(False, "the champion could not be evaluated on the challenger's test set")
    new, old = metrics.get("auc", 0.0), metrics["champion_auc"]
    if new >= old + min_gain:
        return Decision(True, f"auc {new:.3f} >= champion {old:.3f} + {min_gain} on the same test set")
    return Decision(False, f"auc {new:.3f} < champion {old:.3f} + {min_gain} on the same test set")
