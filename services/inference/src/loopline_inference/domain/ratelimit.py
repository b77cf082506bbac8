"""Per-client token buckets: each client may make ``burst`` requests at once and ``rate`` a second
sustained. Pure: the clock is injected, nothing here knows gRPC or HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limit:
    """``rate`` requests a second sustained, ``burst`` at once; ``rate`` <= 0 means unlimited."""

    rate: float
    burst: float

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """One bucket per client id, created full on the client's first request."""

    default: Limit
    overrides: dict[str, Limit] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @property
    def unlimited(self) -> bool:
        """No client has a limit: the caller need not even find out who is calling."""
        return self.default.unlimited and all(o.unlimited for o in self.overrides.values())

    def limit_for(self, client: str) -> Limit:
        return self.overrides.get(client, self.default)

    def allow(self, client: str, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``client``'s bucket; False (nothing taken) when it has too few."""
        limit = self.limit_for(client)
        if limit.unlimited:
            return True
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(limit.burst, now)
        bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.at) * limit.rate)
        bucket.at = now
        if bucket.tokens < cost:
            return False
        bucket.tokens -= cost
        return True
