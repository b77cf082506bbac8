"""Canary routing: shares hold, entities stick to their arm, raising the share only moves keys one way."""

from __future__ import annotations

from loopline_inference.domain.routing import RolloutPolicy, bucket, route, sticky_key


def _challenger_share(policy: RolloutPolicy, keys: list[str]) -> float:
    hits = sum(route(policy, k, challenger_loaded=True, salt="fraud").serve == "challenger" for k in keys)
    return hits / len(keys)


def test_canary_share_is_met_within_sampling_error() -> None:
    keys = [f"customer-{i}" for i in range(20_000)]
    for share in (0.05, 0.2, 0.5):
        got = _challenger_share(RolloutPolicy("canary", share), keys)
        # binomial sd at n=20,000 is at most 0.0035: five of them
        assert abs(got - share) < 0.018, (share, got)


def test_an_entity_always_meets_the_same_arm_and_raising_the_share_never_moves_it_back() -> None:
    keys = [f"c{i}" for i in range(2_000)]
    low, high = RolloutPolicy("canary", 0.1), RolloutPolicy("canary", 0.4)
    first = {k: route(low, k, challenger_loaded=True, salt="fraud").serve for k in keys}
    assert all(route(low, k, challenger_loaded=True, salt="fraud").serve == first[k] for k in keys)
    raised = {k: route(high, k, challenger_loaded=True, salt="fraud").serve for k in keys}
    assert all(raised[k] == "challenger" for k in keys if first[k] == "challenger")
    assert sum(v == "challenger" for v in raised.values()) > sum(v == "challenger" for v in first.values())


def test_sticky_key_and_modes() -> None:
    by_entity, by_request = RolloutPolicy("canary", 0.5, "entity"), RolloutPolicy("canary", 0.5, "request")
    assert sticky_key(by_entity, "c1", "r1") == "c1"
    assert sticky_key(by_entity, "", "r1") == "r1", "no entity: the request id still routes"
    assert sticky_key(by_request, "c1", "r1") == "r1"
    everyone = RolloutPolicy("canary", 1.0)
    assert route(everyone, "k", challenger_loaded=False).serve == "champion", "nothing loaded: champion"
    assert route(RolloutPolicy("direct", 1.0), "k", challenger_loaded=True).serve == "champion"
    shadow = route(RolloutPolicy("shadow", 0.0), "k", challenger_loaded=True)
    assert shadow.serve == "champion" and shadow.shadow
    assert not route(everyone, "k", challenger_loaded=True).shadow


def test_models_are_routed_independently() -> None:
    keys = [f"c{i}" for i in range(5_000)]
    a = {k for k in keys if bucket(k, "fraud") < 0.3}
    b = {k for k in keys if bucket(k, "churn") < 0.3}
    overlap = len(a & b) / len(keys)
    assert abs(overlap - 0.09) < 0.03, overlap  # independent: 0.3 * 0.3
