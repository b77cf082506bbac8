"""What a generation costs: a price table per model and serving variant, input and output rates per
1,000 tokens (``LOOPLINE_INFERENCE_LLM_PRICES``). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Price:
    input_per_1k: float
    output_per_1k: float
    currency: str = "USD"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000.0


class PriceTable:
    """Prices by (model, variant); a model or variant without an entry costs nothing (and says so: no currency)."""

    def __init__(self, prices: Mapping[tuple[str, str], Price]) -> None:
        self._prices = dict(prices)

    @classmethod
    def from_config(cls, config: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> PriceTable:
        """From ``{"model": {"variant": {"input_per_1k": .., "output_per_1k": .., "currency": ..}}}``;
        a negative or missing rate is refused (a misconfigured table must fail at start-up)."""
        prices: dict[tuple[str, str], Price] = {}
        for model, variants in config.items():
            for variant, entry in variants.items():
                try:
                    price = Price(float(entry["input_per_1k"]), float(entry["output_per_1k"]),
                                  str(entry.get("currency", "USD")))
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"price of {model}/{variant}: needs input_per_1k and output_per_1k "
                                     f"({type(e).__name__}: {e})") from None
                if price.input_per_1k < 0 or price.output_per_1k < 0:
                    raise ValueError(f"price of {model}/{variant}: rates must not be negative")
                prices[(model, variant)] = price
        return cls(prices)

    def get(self, model: str, variant: str) -> Price | None:
        return self._prices.get((model, variant))

    def cost(self, model: str, variant: str, prompt_tokens: int, completion_tokens: int) -> tuple[float, str]:
        """(cost, currency) of a generation; (0.0, "") when the table has no price for it."""
        price = self.get(model, variant)
        if price is None:
            return 0.0, ""
        return price.cost(prompt_tokens, completion_tokens), price.currency
