"""Sampling parameters of an LLM request, checked before they reach the engine. Pure.

The names are vLLM's (``temperature``, ``top_p``, ``max_tokens``, ...). An unknown name, a wrong type or
a value out of range is refused here with the parameter's name, so a caller gets a clear INVALID_ARGUMENT
instead of whatever the engine would say (or, worse, silently ignore).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


class SamplingError(ValueError):
    """A sampling parameter is unknown, of the wrong type or out of range (the caller's error)."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SamplingError(f"sampling parameter {name!r} must be a finite number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingError(f"sampling parameter {name!r} must be an integer")
    return value


def _in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> float:
        x = _number(name, value)
        if x < lo or x > hi or (lo_open and x == lo):
            raise SamplingError(f"sampling parameter {name!r} must be in {'(' if lo_open else '['}{lo}, {hi}]")
        return x

    return check


def _int_between(lo: int, hi: int) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> int:
        x = _integer(name, value)
        if not lo <= x <= hi:
            raise SamplingError(f"sampling parameter {name!r} must be an integer in [{lo}, {hi}]")
        return x

    return check


def _top_k(name: str, value: Any) -> int:
    x = _integer(name, value)
    if x == 0 or x < -1:
        raise SamplingError(f"sampling parameter {name!r} must be -1 (off) or at least 1")
    return x


def _seed(name: str, value: Any) -> int:
    x = _integer(name, value)
    if not 0 <= x < 2**63:
        raise SamplingError(f"sampling parameter {name!r} must be a non-negative 64-bit integer")
    return x


def _stop(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise SamplingError(f"sampling parameter {name!r} must be a non-empty string or a list of them")
    if len(items) > MAX_STOP:
        raise SamplingError(f"sampling parameter {name!r} takes at most {MAX_STOP} strings")
    return list(items)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SamplingError(f"sampling parameter {name!r} must be true or false")
    return value


MAX_STOP = 8
MAX_TOKENS = 65_536

CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "temperature": _in(0.0, 10.0),
    "top_p": _in(0.0, 1.0, lo_open=True),
    "top_k": _top_k,
    "min_p": _in(0.0, 1.0),
    "max_tokens": _int_between(1, MAX_TOKENS),
    "min_tokens": _int_between(0, MAX_TOKENS),
    "seed": _seed,
    "stop": _stop,
    "presence_penalty": _in(-2.0, 2.0),
    "frequency_penalty": _in(-2.0, 2.0),
    "repetition_penalty": _in(0.0, 10.0, lo_open=True),
    "ignore_eos": _flag,
}
"""Every parameter a request may set, with its check (which returns the value normalised)."""


def validate(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters checked and normalised (floats as floats, ``stop`` as a list); refuses unknown names."""
    if not isinstance(parameters, Mapping):
        raise SamplingError("sampling parameters must be an object")
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        check = CHECKS.get(name)
        if check is None:
            raise SamplingError(f"unknown sampling parameter {name!r} (known: {', '.join(sorted(CHECKS))})")
        if value is None:  # OpenAI clients send null for "not set"
            continue
        out[name] = check(name, value)
    if "min_tokens" in out and "max_tokens" in out and out["min_tokens"] > out["max_tokens"]:
        raise SamplingError("sampling parameter 'min_tokens' must not exceed 'max_tokens'")
    return out


def merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A prompt's default parameters with the request's own on top (a request's null keeps the default)."""
    return {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
