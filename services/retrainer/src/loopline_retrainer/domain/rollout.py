"""The rollout of a challenger: what is watched, and when it is promoted or rolled back. Pure.

Three rates are compared, challenger against champion, each by the always-valid test of
:mod:`loopline_retrainer.domain.sprt`, so the decision can be re-made after every observation:

- ``error_rate``: served rows whose arm failed (the row carries an error);
- ``latency_breach_rate``: rows slower than the policy's ``latency_budget_ms``;
- ``label_error_rate``: labelled rows whose score, thresholded, disagrees with the label. A
  thresholded disagreement is a Bernoulli rate, which is what the test needs; per-row log-loss over
  ``ln 2`` would be the same event (the label's probability under 1/2), and a mean log-loss is not a
  rate and has no bounded variance for the normal approximation to lean on.

The policy's ``alpha`` bounds the chance of a wrong decision over the whole rollout: a wrong
rollback is some signal's false "worse", so each signal is tested at ``alpha / 3`` (Bonferroni); a
wrong promotion needs every signal "not worse", so that side needs no split, and the same per-signal
level is used for both to keep one threshold per signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from loopline_retrainer.domain.sprt import Arm, SignalTest, Verdict, compare_rates

SIGNALS = ("error_rate", "latency_breach_rate", "label_error_rate")
MODES = ("canary", "shadow")


class Step(StrEnum):
    CONTINUE = "continue"
    PROMOTE = "promoted"
    ROLLBACK = "rolled_back"


@dataclass(frozen=True)
class Policy:
    """The registry's RolloutPolicy with defaults filled in, plus the test's margin and mixture width."""

    mode: str = "canary"
    alpha: float = 0.05
    min_samples: int = 200
    latency_budget_ms: float = 100.0
    min_duration_s: float = 60.0
    max_duration_s: float = 0.0
    margin: float = 0.05
    """How much worse (absolute rate) a challenger may be and still count as not worse."""
    tau: float = 0.05
    """The mixture's standard deviation: the size of difference the test is most sensitive to."""

    @property
    def signal_alpha(self) -> float:
        return self.alpha / len(SIGNALS)


@dataclass(frozen=True)
class Counts:
    """What was observed of one arm: rows served, rows failed, rows over budget, rows labelled, wrong."""

    rows: int = 0
    errors: int = 0
    breaches: int = 0
    labelled: int = 0
    wrong: int = 0

    def arm(self, signal: str) -> Arm:
        if signal == "error_rate":
            return Arm(self.rows, self.errors)
        if signal == "latency_breach_rate":
            return Arm(self.rows, self.breaches)
        return Arm(self.labelled, self.wrong)


@dataclass(frozen=True)
class Outcome:
    step: Step
    reason: str
    signals: list[SignalTest]


def signals(policy: Policy, champion: Counts, challenger: Counts) -> list[SignalTest]:
    return [compare_rates(s, champion.arm(s), challenger.arm(s), alpha=policy.signal_alpha, margin=policy.margin,
                       tau=policy.tau) for s in SIGNALS]


def _evidence(t: SignalTest) -> str:
    return (f"{t.name} {t.challenger.events}/{t.challenger.n} vs {t.champion.events}/{t.champion.n} "
            f"(LR worse {t.worse_ratio:.3g}, not worse {t.not_worse_ratio:.3g}, threshold {t.threshold:.3g})")


def decide(policy: Policy, champion: Counts, challenger: Counts, elapsed_s: float) -> Outcome:
    """Roll back on any signal found worse (at once: safety needs no minimum); promote when every
    signal is found not worse, each arm has ``min_samples`` on each signal and ``min_duration_s`` has
    passed; roll back when ``max_duration_s`` (if set) passes without a decision; else wait."""
    tests = signals(policy, champion, challenger)
    worse = [t for t in tests if t.verdict is Verdict.WORSE]
    if worse:
        return Outcome(Step.ROLLBACK, "challenger worse: " + "; ".join(_evidence(t) for t in worse), tests)
    done = all(t.verdict is Verdict.NOT_WORSE for t in tests)
    enough = all(min(t.champion.n, t.challenger.n) >= policy.min_samples for t in tests)
    if done and enough and elapsed_s >= policy.min_duration_s:
        return Outcome(Step.PROMOTE, f"not worse than the champion (margin {policy.margin:g}) after "
                                     f"{elapsed_s:.0f}s: " + "; ".join(_evidence(t) for t in tests), tests)
    if policy.max_duration_s and elapsed_s >= policy.max_duration_s:
        open_ = [t for t in tests if t.verdict is not Verdict.NOT_WORSE or
                 min(t.champion.n, t.challenger.n) < policy.min_samples]
        return Outcome(Step.ROLLBACK, f"no decision within {policy.max_duration_s:g}s: "
                                      + "; ".join(_evidence(t) for t in open_ or tests), tests)
    return Outcome(Step.CONTINUE, "watching", tests)
