"""The feature view's window rule, pure: what the offline log and the online row both compute from."""

from __future__ import annotations

import pytest
from loopline_feature.domain.features import History, Timeline

DAY = 86400.0


def test_a_window_holds_only_what_came_strictly_before_and_within_the_window() -> None:
    line = Timeline([(100.0, 10.0), (50.0, 30.0), (100.0, 20.0), (DAY + 60.0, 1000.0)])
    assert line.before(50.0, DAY) == History(0, 0.0, 0.0), "nothing before the first"
    assert line.before(100.0, DAY) == History(1, 30.0, 50.0), "events at the same instant do not see each other"
    assert line.before(100.0 + 1e-6, DAY) == History(3, 20.0, 100.0)
    assert line.before(DAY + 60.0, DAY) == History(2, 15.0, 100.0), "the one at t=50 fell out of the window"
    assert line.before(DAY + 50.0, DAY) == History(3, 20.0, 100.0), "the window's start is inclusive"


def test_it_matches_counting_by_hand_on_random_data() -> None:
    import random  # noqa: PLC0415

    rng = random.Random(3)  # noqa: S311 - test data, not secrets
    rows = [(rng.uniform(0, 5 * DAY), rng.uniform(1, 500)) for _ in range(400)]
    line = Timeline(rows)
    for t in [rng.uniform(0, 6 * DAY) for _ in range(50)]:
        inside = [a for s, a in rows if t - DAY <= s < t]
        got = line.before(t, DAY)
        assert got.count == len(inside)
        assert got.mean_amount == pytest.approx(sum(inside) / len(inside) if inside else 0.0)
