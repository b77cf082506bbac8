"""Which exported variant of the served version answers a request. Pure."""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS = ("torch", "onnx", "onnx-int8", "triton")
FALLBACK = "torch"
"""The champion's in-process variant: what answers when the routed one fails or is not loaded."""


@dataclass(frozen=True)
class VariantPolicy:
    default_variant: str = FALLBACK
    fast_variant: str = ""
    fast_budget_ms: float = 0.0


def choose_variant(policy: VariantPolicy, available: frozenset[str], *, requested: str = "",
                   latency_budget_ms: float | None = None) -> str:
    """The variant to run: the one a request names if loaded, else the fast one under a tight latency
    budget, else the policy's default; whatever is chosen must be loaded, else the fallback."""
    for want in (requested,
                 policy.fast_variant if latency_budget_ms is not None and latency_budget_ms < policy.fast_budget_ms
                 else "",
                 policy.default_variant):
        if want and want in available:
            return want
    return FALLBACK
