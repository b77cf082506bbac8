"""JSON as Loopline reads it from outside: finite numbers only, objects where records are expected."""

from __future__ import annotations

import json
from typing import Any

from loopline_core.errors import invalid


def _no_constant(name: str) -> Any:
    raise invalid(f"non-finite number {name} is not allowed")


def finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a decoded value. Iterative: nesting depth costs no stack.
    ``v - v`` is 0.0 for a finite float and NaN otherwise (cheaper than a math.isfinite call)."""
    pending = [value]
    while pending:
        current = pending.pop()
        items = current.values() if type(current) is dict else current if type(current) is list else ()
        for v in items:
            kind = type(v)
            if kind is float:
                if v - v != 0.0:
                    return False
            elif kind is dict or kind is list:
                pending.append(v)
    return True


def _check_finite(value: Any) -> None:
    """A number too large for a double (``1e400``) parses as inf; find it after the fast C parse
    (a parse_float hook would push every float through Python code)."""
    if not finite(value):
        raise invalid("a number is out of range (it overflows a double)")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def loads_strict(raw: bytes | str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and numbers that overflow a double.

    Python's json accepts those by default, and a NaN then passes every ``<``/``>`` range check.
    """
    try:
        value = _DECODER.decode(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        raise invalid(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise invalid(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise invalid("JSON nested too deeply") from exc
    _check_finite(value)
    return value


def canonical(value: Any) -> str:
    """One text per JSON value whatever its key order or spacing (for ids derived from content)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
