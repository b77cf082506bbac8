"""The LLM price table: cost = tokens x rates per model and variant. Pure, no stack."""

from __future__ import annotations

import pytest
from loopline_inference.domain.pricing import PriceTable


def test_cost_is_tokens_times_rates() -> None:
    table = PriceTable.from_config({"m": {"vllm": {"input_per_1k": 0.5, "output_per_1k": 1.5, "currency": "EUR"}}})
    assert table.cost("m", "vllm", 1000, 2000) == (pytest.approx(3.5), "EUR")
    assert table.cost("m", "other", 1000, 2000) == (0.0, "")
    for bad in [{"m": {"vllm": {"input_per_1k": 1}}}, {"m": {"vllm": {"input_per_1k": -1, "output_per_1k": 1}}}]:
        with pytest.raises(ValueError, match="m/vllm"):
            PriceTable.from_config(bad)
