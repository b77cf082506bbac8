"""Backends and variants in process: which variant a request gets (pure), and what ``load_variants`` makes of
a version's signed exports in the real S3 store (ONNX equals torch, INT8 stays close, a tampered export is
refused and counted while torch serves, a Triton that does not answer is left out)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from loopline_core.objstore import ObjectStore
from loopline_core.signing import TrustStore
from loopline_inference.adapters.backends import load_variants
from loopline_inference.domain.variants import FALLBACK, VariantPolicy, choose_variant
from loopline_stack.procs import free_port
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, register_signed_model
from prometheus_client import REGISTRY

ALL = frozenset({"torch", "onnx", "onnx-int8", "triton"})
POLICY = VariantPolicy(default_variant="onnx", fast_variant="onnx-int8", fast_budget_ms=10)


def test_a_named_variant_wins_when_loaded() -> None:
    assert choose_variant(POLICY, ALL, requested="triton") == "triton"
    assert choose_variant(POLICY, ALL, requested="triton", latency_budget_ms=1) == "triton"
    assert choose_variant(POLICY, ALL - {"triton"}, requested="triton") == "onnx", "not loaded: the policy decides"


def test_a_tight_budget_takes_the_fast_variant_and_a_loose_one_the_default() -> None:
    assert choose_variant(POLICY, ALL, latency_budget_ms=5) == "onnx-int8"
    assert choose_variant(POLICY, ALL, latency_budget_ms=10) == "onnx", "the budget must be under the threshold"
    assert choose_variant(POLICY, ALL) == "onnx", "no budget: the default"
    assert choose_variant(POLICY, ALL - {"onnx-int8"}, latency_budget_ms=5) == "onnx"


def test_whatever_is_chosen_must_be_loaded_else_torch() -> None:
    assert choose_variant(POLICY, frozenset({"torch"}), requested="onnx", latency_budget_ms=1) == FALLBACK
    assert choose_variant(VariantPolicy(), ALL) == "torch"
    assert choose_variant(VariantPolicy(fast_variant="onnx-int8"), ALL, latency_budget_ms=0) == "torch", \
        "no fast budget set: no request is under it"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _loads(model: str, variant: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("loopline_inference_variant_loads_total",
                                      {"model": model, "variant": variant, "outcome": outcome})
    return value or 0.0


async def test_load_variants_from_signed_exports(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                                 executor: ThreadPoolExecutor) -> None:
    registry = services("registry").addr("registry")
    objects = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                          isolated["LOOPLINE_S3_SECRET_KEY"])
    trust = TrustStore.from_dir(Path(isolated["LOOPLINE_TRUSTED_KEYS_DIR"]))
    x = np.random.default_rng(11).normal(size=(256, len(FEATURES))).astype(np.float32)

    v1 = await register_signed_model(isolated, registry, "fraud", seed=1, exports=True)
    model = make_model(1)
    expected = model.predict(x).reshape(-1)
    variants = await load_variants(v1, model, objects, trust, executor)
    assert set(variants) == {"torch", "onnx", "onnx-int8"}, "no Triton URL: no triton variant"
    scores = {name: await b.predict(x) for name, b in variants.items()}
    assert all(s.shape == (len(x),) and s.dtype == np.float32 for s in scores.values())
    assert np.abs(scores["torch"] - expected).max() < 1e-6
    assert np.abs(scores["onnx"] - expected).max() < 1e-5, "ONNX Runtime equals torch"
    int8 = np.abs(scores["onnx-int8"] - expected)
    assert 0 < int8.max() < 0.05 and int8.mean() < 0.01, "INT8 is really quantized, and close"

    # the ONNX export was altered after signing: refused and counted; the INT8 one and torch still load
    refused = _loads("fraud", "onnx", "refused")
    v2 = await register_signed_model(isolated, registry, "fraud", seed=2, exports=True, tamper_export="onnx")
    variants = await load_variants(v2, make_model(2), objects, trust, executor)
    assert set(variants) == {"torch", "onnx-int8"}
    assert _loads("fraud", "onnx", "refused") == refused + 1
    assert np.abs(await variants["torch"].predict(x) - make_model(2).predict(x).reshape(-1)).max() < 1e-6

    # a Triton that does not answer: no triton variant, counted, nothing raised
    not_ready = _loads("fraud", "triton", "not_ready")
    variants = await load_variants(v1, model, objects, trust, executor, triton_url=f"127.0.0.1:{free_port()}")
    assert "triton" not in variants and "onnx" in variants
    assert _loads("fraud", "triton", "not_ready") == not_ready + 1
    for b in variants.values():
        await b.close()
