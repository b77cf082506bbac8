"""An always-valid sequential test on the difference of two Bernoulli rates. Pure.

The mixture SPRT of Johari, Pekelis and Walsh ("Always valid inference", 2017), with the normal
approximation they use for rates: for ``theta = p_challenger - p_champion`` (higher = worse: the
rate of errors, of latency breaches, of wrong labels), with the estimate ``d`` and its variance
``v``, mixing over ``theta ~ N(theta0, tau^2)`` gives the likelihood ratio against ``theta = theta0``

    L(theta0) = sqrt(v / (v + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 v (v + tau^2)))

which is a martingale under the null, so by Ville's inequality it crosses ``1/alpha`` with chance at
most ``alpha`` however often it is looked at. Two nulls are tested on each signal:

- "not worse" (``theta0 = 0``): crossing with ``d > 0`` says the challenger is **worse**;
- "worse by the margin" (``theta0 = margin``): crossing with ``d < margin`` says it is **not worse**
  by more than the margin (a non-inferiority test, the evidence a promotion needs).

Rates are smoothed as ``(events + 1) / (n + 2)`` so an arm with no events yet does not claim a zero
variance: with 0 errors in 20 calls the error rate is still uncertain, and the test must say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

_MAX_LOG = 700.0  # exp(700) is near float's limit; a ratio that large is a certainty either way


class Verdict(StrEnum):
    WORSE = "worse"
    NOT_WORSE = "not_worse"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Arm:
    """Observations of one arm on one signal: ``events`` of ``n`` were bad."""

    n: int = 0
    events: int = 0

    @property
    def rate(self) -> float:
        """The smoothed rate (never exactly 0 or 1)."""
        return (self.events + 1) / (self.n + 2)


@dataclass(frozen=True)
class SignalTest:
    name: str
    champion: Arm
    challenger: Arm
    worse_ratio: float
    not_worse_ratio: float
    threshold: float
    verdict: Verdict


def log_mixture_ratio(d: float, v: float, theta0: float, tau: float) -> float:
    """log L(theta0) for an estimate ``d`` with variance ``v`` and a N(theta0, tau^2) mixture."""
    t2 = tau * tau
    return 0.5 * math.log(v / (v + t2)) + t2 * (d - theta0) ** 2 / (2 * v * (v + t2))


def compare_rates(name: str, champion: Arm, challenger: Arm, *, alpha: float, margin: float,
               tau: float) -> SignalTest:
    """Both tests on one signal, each at the level ``alpha``.

    When both cross (the challenger is surely worse, but by less than the margin) the verdict is
    ``worse``: a rollout is for safety, and a real worsening is a reason to stop whatever its size.
    """
    if not 0 < alpha < 1 or margin < 0 or tau <= 0:
        raise ValueError(f"alpha in (0, 1), margin >= 0, tau > 0 (got {alpha}, {margin}, {tau})")
    threshold = 1.0 / alpha
    if champion.n == 0 or challenger.n == 0:
        return SignalTest(name, champion, challenger, 0.0, 0.0, threshold, Verdict.UNDECIDED)
    pa, pb = champion.rate, challenger.rate
    d = pb - pa
    v = pa * (1 - pa) / champion.n + pb * (1 - pb) / challenger.n
    worse = math.exp(min(log_mixture_ratio(d, v, 0.0, tau), _MAX_LOG)) if d > 0 else 0.0
    not_worse = math.exp(min(log_mixture_ratio(d, v, margin, tau), _MAX_LOG)) if d < margin else 0.0
    if worse >= threshold:
        verdict = Verdict.WORSE
    elif not_worse >= threshold:
        verdict = Verdict.NOT_WORSE
    else:
        verdict = Verdict.UNDECIDED
    return SignalTest(name, champion, challenger, worse, not_worse, threshold, verdict)
