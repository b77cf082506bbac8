"""A model's rollout and variant policies: checked, stored, returned, changed (with an event) and kept."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.registry import RegistryClient
from loopline_registry.domain.models import Model
from loopline_stack.services import ServiceSet

ROLLOUT = pb.RolloutPolicy(mode="canary", canary_share=0.2, sticky_by="entity", alpha=0.05, min_samples=300,
                           latency_budget_ms=50, min_duration_s=30, max_duration_s=600)
VARIANTS = pb.VariantPolicy(default_variant="torch", fast_variant="onnx-int8", fast_budget_ms=5)


@pytest.mark.parametrize(("rollout", "variants", "field"), [
    ({"mode": "blue-green"}, {}, "rollout.mode"),
    ({"mode": "canary"}, {}, "rollout.canary_share"),
    ({"mode": "canary", "canary_share": 1.5}, {}, "rollout.canary_share"),
    ({"sticky_by": "customer"}, {}, "rollout.sticky_by"),
    ({"alpha": 1.0}, {}, "rollout.alpha"),
    ({"min_samples": "-1"}, {}, "rollout.min_samples"),
    ({"min_duration_s": 60, "max_duration_s": 30}, {}, "rollout.max_duration_s"),
    ({}, {"default_variant": "tensorrt"}, "variants.default_variant"),
    ({}, {"fast_budget_ms": -1}, "variants.fast_budget_ms"),
])
def test_policies_are_checked(rollout: dict[str, object], variants: dict[str, object], field: str) -> None:
    with pytest.raises(LooplineError) as caught:
        Model("fraud", rollout=rollout, variants=variants).check_policies()
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT and caught.value.details["field"] == field


async def test_apply_get_list_keep_the_policies(isolated: dict[str, str],
                                                services: Callable[..., ServiceSet]) -> None:
    rc = RegistryClient(services("registry").addr("registry"))
    try:
        applied = await rc.apply_model(pb.Model(name="fraud", rollout=ROLLOUT, variants=VARIANTS), actor="ops")
        assert applied.rollout == ROLLOUT and applied.variants == VARIANTS
        got = await rc.model("fraud")
        assert (got.rollout, got.variants) == (ROLLOUT, VARIANTS)
        assert [(m.rollout, m.variants) for m in await rc.models()] == [(ROLLOUT, VARIANTS)]
        again = await rc.apply_model(pb.Model(name="fraud", rollout=ROLLOUT, variants=VARIANTS), actor="ops")
        assert again.updated_at == applied.updated_at, "the same policies again: no change, no event"

        shadow = pb.RolloutPolicy(mode="shadow", min_samples=100)
        changed = await rc.apply_model(pb.Model(name="fraud", rollout=shadow), actor="ops")
        assert changed.rollout == shadow and changed.variants == pb.VariantPolicy(), "apply sets the whole spec"
        assert changed.updated_at != applied.updated_at

        with pytest.raises(LooplineError) as caught:
            await rc.apply_model(pb.Model(name="fraud", rollout=pb.RolloutPolicy(mode="canary")), actor="ops")
        assert caught.value.kind is ErrorKind.INVALID_ARGUMENT and "canary_share" in caught.value.message
        assert (await rc.model("fraud")).rollout == shadow, "a refused policy changes nothing"
    finally:
        await rc.close()
