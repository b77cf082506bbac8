"""The per-client token bucket (pure: the clock is a variable of the test)."""

from __future__ import annotations

from loopline_inference.domain.ratelimit import Limit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_sustained_rate_per_client() -> None:
    clock = Clock()
    rl = RateLimiter(Limit(rate=2, burst=3), clock=clock)
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b"), "another client has a bucket of its own"
    clock.now += 0.5  # one token back at 2/s
    assert rl.allow("a")
    assert not rl.allow("a")
    clock.now += 60  # refills only up to the burst
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]


def test_overrides_and_unlimited() -> None:
    clock = Clock()
    rl = RateLimiter(Limit(rate=0, burst=0), {"scraper": Limit(rate=1, burst=1)}, clock=clock)
    assert all(rl.allow("anyone") for _ in range(1000)), "rate 0: no limit"
    assert rl.allow("scraper")
    assert not rl.allow("scraper")
    assert rl.limit_for("scraper") == Limit(1, 1)


def test_a_refused_request_takes_nothing() -> None:
    clock = Clock()
    rl = RateLimiter(Limit(rate=1, burst=1), clock=clock)
    assert rl.allow("a")
    for _ in range(5):
        assert not rl.allow("a")
    clock.now += 1.0
    assert rl.allow("a"), "refusals did not dig the bucket below zero"
