"""Alert state with hysteresis. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transition:
    state: str
    raise_alert: bool


def next_state(state: str, score: float, threshold: float, clear: float, evaluations_in_state: int = 0,
               repeat_every: int = 0) -> Transition:
    """``ok`` -> ``alerting`` above ``threshold`` (raise once); back to ``ok`` only below ``clear``.

    While alerting and still above ``threshold``, raise again every ``repeat_every`` evaluations.
    """
    if state == "ok" and score > threshold:
        return Transition("alerting", True)
    if state == "alerting" and score > threshold and repeat_every and evaluations_in_state >= repeat_every:
        return Transition("alerting", True)
    if state == "alerting" and score < clear:
        return Transition("ok", False)
    return Transition(state, False)
