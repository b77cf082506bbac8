"""What the trainer applies to the registry from a model spec: its rollout and variant policies too."""

from __future__ import annotations

import pytest
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import LooplineError
from loopline_ml import spec as specs
from loopline_trainer.handlers.requests import declared_model

BASE = """
name: m
description: d
intended_use: u
owner: o
training: {feature_view: transactions}
"""


def test_fraud_spec_declares_a_canary_rollout_and_variants() -> None:
    model = declared_model(specs.load(specs.default_dir(), "fraud"))
    assert model.rollout.mode == "canary" and 0 < model.rollout.canary_share < 1
    assert model.rollout.min_samples > 0 and model.rollout.alpha == pytest.approx(0.05)
    assert model.variants == pb.VariantPolicy(default_variant="torch", fast_variant="onnx-int8", fast_budget_ms=10)


def test_defaults_and_refusals() -> None:
    model = declared_model(specs.parse(BASE))
    assert model.rollout.mode == "direct" and model.variants.default_variant == "torch"
    assert model.variants.fast_variant == ""
    for bad in ("rollout: {mode: blue-green}", "rollout: {mode: canary, canary_share: 0}",
                "rollout: {min_duration_s: 60, max_duration_s: 30}", "variants: {default_variant: tensorrt}",
                "rollout: {alpha: 1}"):
        with pytest.raises(LooplineError, match="not valid"):
            specs.parse(BASE + bad)
