"""JSON as Loopline reads it from outside: finite numbers only, objects where records are expected."""

from __future__ import annotations

import json
import math
from typing import Any

from loopline_core.errors import invalid


def _no_constant(name: str) -> Any:
    raise invalid(f"non-finite number {name} is not allowed")


def _check_finite(value: Any) -> None:
    """A number too large for a double (``1e400``) parses as inf; find it after the fast C parse
    (a parse_float hook would push every float through Python code)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise invalid("a number is out of range (it overflows a double)")
    elif isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, list):
        for v in value:
            _check_finite(v)


def loads_strict(raw: bytes | str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and numbers that overflow a double.

    Python's json accepts those by default, and a NaN then passes every ``<``/``>`` range check.
    """
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise invalid(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise invalid(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise invalid("JSON nested too deeply") from exc
    try:
        _check_finite(value)
    except RecursionError as exc:
        raise invalid("JSON nested too deeply") from exc
    return value


def canonical(value: Any) -> str:
    """One text per JSON value whatever its key order or spacing (for ids derived from content)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
