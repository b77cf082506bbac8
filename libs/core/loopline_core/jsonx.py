"""JSON as Loopline reads it from outside: finite numbers only, objects where records are expected."""

from __future__ import annotations

import json
import math
from typing import Any

from loopline_core.errors import invalid


def _no_constant(name: str) -> Any:
    raise invalid(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise invalid(f"number {text[:40]} is out of range")
    return value


def loads_strict(raw: bytes | str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and numbers that overflow a double.

    Python's json accepts those by default, and a NaN then passes every ``<``/``>`` range check.
    """
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise invalid(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise invalid(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise invalid("JSON nested too deeply") from exc


def canonical(value: Any) -> str:
    """One text per JSON value whatever its key order or spacing (for ids derived from content)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
