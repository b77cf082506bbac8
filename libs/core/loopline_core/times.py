"""Event and label times as producers send them: the one rule every reader of outside times uses.

A number is epoch seconds, or epoch milliseconds when its magnitude is at least 1e11 (1e11 seconds
is the year 5138, 1e11 milliseconds is 1973, so no real time is ambiguous) or the unit says so; a
string is ISO-8601 with a zone (a naive one would silently take the host's zone). Booleans, NaN,
infinities and times outside 1970..2100 are refused with INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from loopline_core.errors import invalid

MS_THRESHOLD = 1e11
MIN_TIME = 0.0
MAX_TIME = 4102444800.0  # 2100-01-01T00:00:00Z


def parse_time(value: Any, unit: str | None = None, field: str = "ts", what: str = "event time") -> float:
    """Epoch seconds from epoch seconds, epoch milliseconds or a zoned ISO-8601 string (``unit``:
    None reads a number by its magnitude, ``s``/``ms`` force one, ``iso`` takes strings only)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(f"{what} must be a number or an ISO-8601 string", field=field)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise invalid(f"{what} {value[:64]!r} is not ISO-8601", field=field) from exc
        if parsed.tzinfo is None:
            raise invalid(f"{what} {value[:64]!r} has no zone (add Z or an offset)", field=field)
        seconds = parsed.timestamp()
    else:
        if unit == "iso":
            raise invalid(f"{what} must be an ISO-8601 string", field=field)
        if unit not in (None, "s", "ms"):
            raise invalid(f"x-loopline-ts-unit must be s or ms, not {unit[:16]!r}", field=field)
        try:
            number = float(value)
        except OverflowError:
            raise invalid(f"{what} {str(value)[:32]}... is outside 1970..2100", field=field) from None
        if not math.isfinite(number):
            raise invalid(f"{what} must be finite", field=field)
        millis = unit == "ms" or (unit is None and abs(number) >= MS_THRESHOLD)
        seconds = number / 1000.0 if millis else number
    if not MIN_TIME <= seconds < MAX_TIME:
        raise invalid(f"{what} {str(value)[:64]!r} is outside 1970..2100", field=field)
    return seconds
