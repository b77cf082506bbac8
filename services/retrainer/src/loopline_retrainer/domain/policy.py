"""Retraining and promotion policy. Pure.

The promotion decision reads the registry's record of a version (its stored gate, its stage) and of
the model (its approval policy, its champion), never the metrics in a training result: a Kafka
message is something any producer could write, the registry's gate evidence is what the trainer
stored and what the registry itself enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    PROMOTE = "promote"
    ROLLOUT = "rollout"
    """Promote through a canary or shadow rollout: the version becomes ``challenger`` first."""
    STAGE = "stage"
    REJECT = "reject"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str

    @property
    def promote(self) -> bool:
        return self.action is Action.PROMOTE


@dataclass(frozen=True)
class Candidate:
    """What the registry says about the new version and its model."""

    version: int
    retired: bool
    gate_passed: bool
    gate_summary: str
    gate_champion: int
    """The champion the gate's change checks compared against (0: there was none)."""
    requires_approval: bool
    rollout_mode: str = "direct"
    """The model's rollout policy mode: "direct", "canary" or "shadow" ("" reads as direct)."""


def may_request(in_flight_age_s: float | None, since_last_done_s: float | None, *, in_flight_timeout_s: float,
                cooldown_s: float) -> tuple[bool, str]:
    """At most one run in flight per model, and a cool-down after each finished run."""
    if in_flight_age_s is not None and in_flight_age_s < in_flight_timeout_s:
        return False, f"a training run is already in flight ({in_flight_age_s:.0f}s)"
    if since_last_done_s is not None and since_last_done_s < cooldown_s:
        return False, f"cooling down ({since_last_done_s:.0f}s since the last run, need {cooldown_s:.0f}s)"
    return True, "ok"


def decide(c: Candidate, champion: int | None) -> Decision:
    """Promote a version whose stored gate passed against the champion that holds the alias now."""
    if champion == c.version:
        return Decision(Action.NOTHING, "already champion")
    if c.retired:
        return Decision(Action.REJECT, f"v{c.version} is retired")
    if not c.gate_passed:
        return Decision(Action.REJECT, f"gate failed: {c.gate_summary or 'no gate evidence'}")
    if (champion or 0) != c.gate_champion:
        # the change checks compared against another champion: that evidence says nothing about this one
        was = f"v{c.gate_champion}" if c.gate_champion else "no champion"
        return Decision(Action.REJECT, f"gate compared against {was}, but the champion is now "
                                       f"{f'v{champion}' if champion else 'unset'}")
    why = "first version, gate passed" if champion is None else f"gate passed against champion v{champion}"
    if c.requires_approval:
        return Decision(Action.STAGE, f"{why}; staged for approval (`loopline model approve`)")
    why = f"{why}: {c.gate_summary}" if c.gate_summary else why
    # with a champion to compare against on live traffic, a canary or shadow rollout decides the rest
    rollout = champion is not None and c.rollout_mode in ("canary", "shadow")
    return Decision(Action.ROLLOUT, f"{why}; rolled out as {c.rollout_mode} challenger") if rollout else \
        Decision(Action.PROMOTE, why)
