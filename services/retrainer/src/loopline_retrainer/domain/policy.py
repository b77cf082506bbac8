"""Retraining and promotion policy. Pure.

The retraining policy is the model spec's ``retraining:`` section: which alerts (kinds, severities),
label volumes and schedules start a run, the cool-down and the one-run-in-flight rule, full vs warm
start, and the training window (from the alert's onset, after enough labels). Every call returns a
decision with its reason, so skips are as visible as requests.

The promotion decision reads the registry's record of a version (its stored gate, its stage) and of
the model (its approval policy, its champion), never the metrics in a training result: a Kafka
message is something any producer could write, the registry's gate evidence is what the trainer
stored and what the registry itself enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from loopline_ml.spec import Retraining


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


# ---- the retraining policy (the model spec's ``retraining:`` section) ------------------------------

SEVERITIES = {"warning": 1, "critical": 2}
ALERT_TRIGGERS = ("feature_drift", "prediction_drift", "performance")
"""Trigger kinds an alert can be; a retrain for one of them may train from the alert's onset on."""


class Outcome(StrEnum):
    REQUESTED = "requested"
    WAITING = "waiting"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Alert:
    """What the policy reads of an alert (an AlertRaised, or a legacy DriftAlertRaised)."""

    event_id: str
    model: str
    version: int
    kind: str
    severity: str
    episode_id: str
    repeat: int = 1
    onset: float = 0.0
    """Epoch seconds; 0: unknown."""
    window: str = ""
    metric: str = ""
    value: float = 0.0
    threshold: float = 0.0
    report_uri: str = ""
    summary: str = ""

    def evidence(self) -> dict[str, object]:
        return {"alert_id": self.event_id, "episode_id": self.episode_id, "repeat": self.repeat, "kind": self.kind,
                "severity": self.severity, "model_version": self.version, "window": self.window,
                "metric": self.metric, "value": self.value, "threshold": self.threshold,
                "report_uri": self.report_uri, "onset": self.onset, "summary": self.summary}


@dataclass(frozen=True)
class Busy:
    """What the store says about the model's runs: the request waiting or in flight, and the last finished."""

    in_flight_age_s: float | None = None
    since_last_done_s: float | None = None


@dataclass(frozen=True)
class Plan:
    """One decision of the policy; ``min_rows`` labels to wait for (``WAITING``) before the request."""

    outcome: Outcome
    reason: str
    trigger: str
    mode: str = "full"
    code: str = ""
    """Why a skip, in one word: no_spec, repeat, not_configured, below_severity, in_flight, cooldown."""
    window_start: float = 0.0
    min_rows: int = 0
    max_rows: int = 0


def _blocked(policy: Retraining, busy: Busy, trigger: str) -> Plan | None:
    """A skip while a run waits or is in flight, or during the cool-down after the last one."""
    ok, why = may_request(busy.in_flight_age_s, busy.since_last_done_s, in_flight_timeout_s=policy.in_flight_timeout_s,
                          cooldown_s=policy.cooldown_s)
    if ok:
        return None
    code = "cooldown" if why.startswith("cooling") else "in_flight"
    return Plan(Outcome.SKIPPED, why, trigger, policy.mode, code)


def _go(policy: Retraining, trigger: str, reason: str, window_start: float, wait: bool) -> Plan:
    w = policy.window
    waiting = wait and w.min_rows > 0
    outcome = Outcome.WAITING if waiting else Outcome.REQUESTED
    why = f"{reason}; waiting for {w.min_rows} labels since the trigger" if waiting else reason
    return Plan(outcome, why, trigger, policy.mode, window_start=window_start, min_rows=w.min_rows if waiting else 0,
                max_rows=w.max_rows)


def plan_alert(policy: Retraining | None, alert: Alert, busy: Busy, *, episode_requested: bool) -> Plan:
    """What to do about an alert: skip it (and why), or request a run, at once or after ``min_rows`` labels.

    A repeat of an episode that already led to a request is skipped; a repeat of one that did not (it
    came during a cool-down, say) is judged afresh: the condition still holds.
    """
    def skip(code: str, why: str) -> Plan:
        return Plan(Outcome.SKIPPED, why, alert.kind, policy.mode if policy else "full", code)

    if policy is None:
        return skip("no_spec", f"model {alert.model!r} has no spec")
    if episode_requested:
        return skip("repeat", f"repeat {alert.repeat} of alert episode {alert.episode_id}, which already led to "
                              f"a request")
    triggers = [t for t in policy.triggers if t.kind == alert.kind]
    if not triggers:
        return skip("not_configured", f"trigger kind {alert.kind} is not configured")
    least = min((t.min_severity for t in triggers), key=lambda s: SEVERITIES[s])
    if SEVERITIES.get(alert.severity, 0) < SEVERITIES[least]:
        return skip("below_severity", f"severity {alert.severity or 'unset'} is below {least}")
    if (blocked := _blocked(policy, busy, alert.kind)) is not None:
        return blocked
    start = alert.onset if policy.window.from_onset and alert.kind in ALERT_TRIGGERS else 0.0
    reason = f"{alert.kind} ({alert.severity}) on v{alert.version}" + (f": {alert.summary}" if alert.summary else "")
    return _go(policy, alert.kind, reason, start, wait=True)


def plan_label_volume(policy: Retraining | None, new_labels: int, busy: Busy) -> Plan | None:
    """A run after ``labels`` new labels since the last request; None while the count is short (or the
    trigger is not configured): nothing to decide yet."""
    triggers = [t for t in (policy.triggers if policy else []) if t.kind == "label_volume" and t.labels > 0]
    if policy is None or not triggers:
        return None
    needed = min(t.labels for t in triggers)
    if new_labels < needed:
        return None
    if (blocked := _blocked(policy, busy, "label_volume")) is not None:
        return blocked
    return _go(policy, "label_volume", f"{new_labels} new labels since the last run (trigger at {needed})", 0.0,
               wait=False)


def plan_schedule(policy: Retraining | None, since_last_s: float, busy: Busy) -> Plan | None:
    """A run every ``every_s`` since the last request (or since the retrainer first saw the model); None
    while it is not due (or no schedule is configured)."""
    triggers = [t for t in (policy.triggers if policy else []) if t.kind == "schedule" and t.every_s > 0]
    if policy is None or not triggers:
        return None
    every = min(t.every_s for t in triggers)
    if since_last_s < every:
        return None
    if (blocked := _blocked(policy, busy, "schedule")) is not None:
        return blocked
    return _go(policy, "schedule", f"scheduled every {every:.0f}s ({since_last_s:.0f}s since the last run)", 0.0,
               wait=False)
