"""The sequential test and the rollout decisions, as pure functions (no stack)."""

from __future__ import annotations

import random

import pytest
from loopline_retrainer.domain.policy import Action, Candidate, decide
from loopline_retrainer.domain.rollout import Counts, Policy, Step
from loopline_retrainer.domain.rollout import decide as decide_rollout
from loopline_retrainer.domain.sprt import Arm, Verdict, compare_rates

ALPHA, MARGIN, TAU = 0.05, 0.05, 0.05


def _stream(p_champion: float, p_challenger: float, seed: int, steps: int) -> tuple[bool, bool, int]:
    """One stream of observations, each to a random arm, tested after every one: whether "worse" and
    "not worse" ever crossed, and after how many observations the first verdict came."""
    rng = random.Random(seed)  # noqa: S311 - simulated streams, not secrets
    a, b = [0, 0], [0, 0]
    worse = not_worse = False
    first = steps
    for i in range(steps):
        arm, p = (a, p_champion) if rng.random() < 0.5 else (b, p_challenger)
        arm[0] += 1
        arm[1] += rng.random() < p
        t = compare_rates("x", Arm(*a), Arm(*b), alpha=ALPHA, margin=MARGIN, tau=TAU)
        worse |= t.worse_ratio >= t.threshold
        not_worse |= t.not_worse_ratio >= t.threshold
        if t.verdict is not Verdict.UNDECIDED and first == steps:
            first = i
    return worse, not_worse, first


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.3])
def test_equal_arms_rarely_look_worse_however_often_checked(rate: float) -> None:
    """Under H0 (the same rate), checked after every one of 1,500 observations, "worse" crosses in at most
    alpha of the streams (the test's promise; the normal approximation is allowed a little slack)."""
    runs = 150
    alarms = sum(_stream(rate, rate, seed, 1500)[0] for seed in range(runs))
    assert alarms / runs <= ALPHA + 0.02, f"{alarms}/{runs} false alarms at rate {rate}"


def test_worse_by_the_margin_is_rarely_called_not_worse() -> None:
    """The promotion side: a challenger worse by exactly the margin passes as "not worse" rarely."""
    runs = 150
    wrong = sum(_stream(0.1, 0.1 + MARGIN, seed, 1500)[1] for seed in range(runs))
    assert wrong / runs <= ALPHA + 0.02, f"{wrong}/{runs} wrong promotions"


def test_a_clearly_worse_arm_crosses_soon() -> None:
    results = [_stream(0.05, 0.9, seed, 1500) for seed in range(50)]
    assert all(worse for worse, _, _ in results)
    assert max(first for _, _, first in results) < 200, "an inverted model is caught within a few dozen rows"
    results = [_stream(0.05, 0.25, seed, 3000) for seed in range(50)]
    assert sum(worse for worse, _, _ in results) >= 48


def test_verdicts_are_deterministic_and_explained() -> None:
    t1 = compare_rates("error_rate", Arm(400, 8), Arm(400, 40), alpha=ALPHA, margin=MARGIN, tau=TAU)
    t2 = compare_rates("error_rate", Arm(400, 8), Arm(400, 40), alpha=ALPHA, margin=MARGIN, tau=TAU)
    assert t1 == t2 and t1.verdict is Verdict.WORSE and t1.worse_ratio >= t1.threshold == 1 / ALPHA
    same = compare_rates("error_rate", Arm(2000, 40), Arm(2000, 41), alpha=ALPHA, margin=MARGIN, tau=TAU)
    assert same.verdict is Verdict.NOT_WORSE and same.worse_ratio < 1
    few = compare_rates("error_rate", Arm(20, 0), Arm(20, 0), alpha=ALPHA, margin=MARGIN, tau=TAU)
    assert few.verdict is Verdict.UNDECIDED, "no errors in 20 calls is not yet evidence of anything"
    empty = compare_rates("error_rate", Arm(), Arm(50, 50), alpha=ALPHA, margin=MARGIN, tau=TAU)
    assert empty.verdict is Verdict.UNDECIDED and empty.worse_ratio == 0
    with pytest.raises(ValueError, match="alpha"):
        compare_rates("x", Arm(1, 0), Arm(1, 0), alpha=0, margin=MARGIN, tau=TAU)


POLICY = Policy(alpha=0.05, min_samples=300, latency_budget_ms=50, min_duration_s=30, max_duration_s=600)


def _counts(n: int, errors: int = 0, breaches: int = 0, labelled: int | None = None, wrong: int = 0) -> Counts:
    return Counts(n, errors, breaches, n if labelled is None else labelled, wrong)


def test_rollout_decisions() -> None:
    good = _counts(1000, 5, 10, wrong=40)
    # a challenger whose labels say it is worse is rolled back at once, evidence in the reason
    out = decide_rollout(POLICY, good, _counts(100, 0, 1, wrong=90), elapsed_s=5)
    assert out.step is Step.ROLLBACK and "label_error_rate 90/100 vs 40/1000" in out.reason
    assert [t.verdict.value for t in out.signals][2] == "worse"
    # failing calls, too
    assert decide_rollout(POLICY, good, _counts(200, 60, 2, labelled=0), elapsed_s=5).step is Step.ROLLBACK
    # as good as the champion: promoted once enough rows and time have passed, not before
    same = _counts(1000, 5, 10, wrong=40)
    assert decide_rollout(POLICY, good, same, elapsed_s=10).step is Step.CONTINUE, "min_duration_s"
    assert decide_rollout(POLICY, good, _counts(250, 1, 2, wrong=10), elapsed_s=60).step is Step.CONTINUE, \
        "min_samples"
    promoted = decide_rollout(POLICY, good, same, elapsed_s=60)
    assert promoted.step is Step.PROMOTE and "not worse" in promoted.reason
    assert all(t.verdict.value == "not_worse" for t in promoted.signals)
    # undecided for too long: rolled back
    slow = decide_rollout(POLICY, good, _counts(30, 0, 0, labelled=0), elapsed_s=601)
    assert slow.step is Step.ROLLBACK and "no decision within 600s" in slow.reason
    assert decide_rollout(Policy(max_duration_s=0), good, _counts(30), elapsed_s=10**6).step is Step.CONTINUE
    # per-signal level: alpha split over the three signals
    assert promoted.signals[0].threshold == pytest.approx(3 / 0.05)


def test_gated_version_goes_to_rollout_when_the_policy_says_so() -> None:
    c = Candidate(2, False, True, "auc_pr 0.91 >= 0.90", 1, False, "canary")
    d = decide(c, 1)
    assert d.action is Action.ROLLOUT and "canary" in d.reason and not d.promote
    assert decide(Candidate(1, False, True, "", 0, False, "canary"), None).action is Action.PROMOTE, \
        "a first version has no champion to be compared with"
    assert decide(Candidate(2, False, True, "", 1, False, "direct"), 1).action is Action.PROMOTE
    assert decide(Candidate(2, False, True, "", 1, True, "shadow"), 1).action is Action.STAGE, \
        "a model that needs a human approval still waits for one"
