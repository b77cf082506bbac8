"""Which arm of a rollout answers a request. Pure.

Stickiness: the arm is a function of a stable key (the entity id, else the request id) hashed into
[0, 1), so the same entity always meets the same arm while the share stays put, and raising the
share only moves keys from the champion to the challenger, never back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Role = Literal["champion", "challenger"]


@dataclass(frozen=True)
class RolloutPolicy:
    mode: Literal["direct", "canary", "shadow"] = "direct"
    canary_share: float = 0.0
    sticky_by: Literal["entity", "request"] = "entity"


@dataclass(frozen=True)
class Route:
    serve: Role
    """The arm whose answer the caller gets."""
    shadow: bool
    """Whether the challenger also scores a copy (its answer is only logged)."""


def bucket(key: str, salt: str = "") -> float:
    """A uniform point in [0, 1) from a key; ``salt`` (the model name) keeps models independent."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def sticky_key(policy: RolloutPolicy, entity_id: str, request_id: str) -> str:
    return entity_id if policy.sticky_by == "entity" and entity_id else request_id


def route(policy: RolloutPolicy, key: str, *, challenger_loaded: bool, salt: str = "") -> Route:
    if not challenger_loaded or policy.mode == "direct":
        return Route("champion", shadow=False)
    if policy.mode == "shadow":
        return Route("champion", shadow=True)
    return Route("challenger" if bucket(key, salt) < policy.canary_share else "champion", shadow=False)
