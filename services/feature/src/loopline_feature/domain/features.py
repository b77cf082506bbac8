"""The transaction feature view: one definition for online values and the offline log. Pure.

Each feature of an event is computed from the event and the customer's history strictly before the
event's time, so the offline log is point-in-time correct by construction and the same function
serves a live request from the online aggregates.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, datetime

VIEW = "transactions"
FEATURE_NAMES = ["amount", "log_amount", "txn_count_24h", "mean_amount_24h", "amount_to_mean", "night",
                 "risky_category"]
ONLINE_NAMES = ["txn_count_24h", "mean_amount_24h"]
RISKY_CATEGORIES = frozenset({"electronics", "gift_cards", "crypto"})


@dataclass(frozen=True)
class History:
    """A customer's transactions in the window before an event."""

    count: int
    mean_amount: float
    latest: float = 0.0
    """Event time of the newest transaction in the window (0 when empty): how fresh the values are."""


def compute(amount: float, event_time: float, merchant_category: str, history: History) -> list[float]:
    hour = datetime.fromtimestamp(event_time, UTC).hour
    return [
        amount,
        math.log1p(amount),
        float(history.count),
        history.mean_amount,
        amount / (history.mean_amount + 1.0),
        1.0 if hour < 6 else 0.0,
        1.0 if merchant_category in RISKY_CATEGORIES else 0.0,
    ]


class Timeline:
    """One customer's transactions, ``(event_time, amount)``, in time order: the History of any instant
    is a window over it (the same rule the offline log and the online row are computed with)."""

    def __init__(self, rows: list[tuple[float, float]]) -> None:
        rows = sorted(rows)
        self.times = [t for t, _ in rows]
        self.sums = [0.0]
        for _, amount in rows:
            self.sums.append(self.sums[-1] + amount)

    def before(self, t: float, window_s: float) -> History:
        """The transactions in ``[t - window_s, t)``."""
        lo, hi = bisect_left(self.times, t - window_s), bisect_left(self.times, t)
        n = hi - lo
        if n == 0:
            return History(0, 0.0, 0.0)
        return History(n, (self.sums[hi] - self.sums[lo]) / n, self.times[hi - 1])
