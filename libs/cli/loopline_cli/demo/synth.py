"""A synthetic card-transaction stream with fraud labels and a drift that can begin part way.

Before the drift, fraud is large amounts for the customer, often at night or in risky categories.
After it, every amount is 2.5x larger (covariate shift the monitor can see) and fraud becomes
small amounts at night in risky categories (concept drift that only labels reveal): a model trained
before the drift ranks the new fraud badly, one trained on recent labels ranks it well.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

CATEGORIES = ["grocery", "fuel", "restaurants", "travel", "electronics", "gift_cards", "clothing", "pharmacy"]
RISKY = ["electronics", "gift_cards", "crypto"]
COUNTRIES = ["NL", "DE", "FR", "GB", "US", "ES"]


@dataclass
class Customer:
    customer_id: str
    base_amount: float
    country: str
    device: str


class TransactionStream:
    def __init__(self, seed: int = 7, customers: int = 100, fraud_rate: float = 0.07, start_time: float = 1.79e9,
                 seconds_per_event: float = 200.0) -> None:
        self.rng = random.Random(seed)
        self.fraud_rate = fraud_rate
        self.t = start_time
        self.step = seconds_per_event
        self.customers = [Customer(f"c{i:04d}", self.rng.lognormvariate(3.4, 0.6), self.rng.choice(COUNTRIES),
                                   f"d{self.rng.randrange(10**6):06d}") for i in range(customers)]
        self.drifted = False

    def next(self) -> tuple[dict[str, Any], int]:
        """One transaction and its (future) label."""
        r = self.rng
        self.t += r.expovariate(1 / self.step)
        c = r.choice(self.customers)
        fraud = r.random() < self.fraud_rate
        scale = 2.5 if self.drifted else 1.0
        if not fraud:
            amount = c.base_amount * r.lognormvariate(0, 0.35) * scale
            night = r.random() < 0.15
            risky = r.random() < (0.25 if self.drifted else 0.12)
        elif not self.drifted:
            amount = c.base_amount * r.uniform(4, 9)
            night = r.random() < 0.6
            risky = r.random() < 0.5
        else:
            amount = c.base_amount * scale * r.uniform(0.2, 0.6)
            night = r.random() < 0.9
            risky = r.random() < 0.95
        category = r.choice(RISKY if risky else CATEGORIES[:4] + CATEGORIES[6:])
        if category == "crypto" and not self.drifted:
            category = "electronics"  # a category that only appears after the drift
        t = self.t
        if night != (_hour(t) < 6):
            t = _move_to(t, night)
        txn = {"event_id": str(uuid.UUID(int=r.getrandbits(128))), "customer_id": c.customer_id,
               "merchant_id": f"m{r.randrange(5000):04d}", "amount": round(amount, 2), "currency": "EUR",
               "country": c.country, "merchant_category": category, "device": c.device, "ts": t}
        return txn, int(fraud)

    def malformed(self) -> dict[str, Any]:
        """A record that breaks the contract (what a buggy upstream producer sends now and then)."""
        txn, _ = self.next()
        kind = self.rng.randrange(3)
        if kind == 0:
            txn.pop("customer_id")
        elif kind == 1:
            txn["amount"] = "twelve"
        else:
            txn["currency"] = "EURO"
        return txn


def _hour(t: float) -> int:
    return int(t // 3600) % 24


def _move_to(t: float, night: bool) -> float:
    """Shift ``t`` within its day into (night) 00-06h or (day) 06-24h, keeping the minutes."""
    day = t - t % 86400
    minute = t % 3600
    hour = _hour(t)
    hour = hour % 6 if night else 6 + hour % 18
    return day + hour * 3600 + minute
