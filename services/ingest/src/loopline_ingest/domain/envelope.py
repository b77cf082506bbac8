"""Turning an upstream record into an envelope: event id, event time, entity key. Pure.

Input rules (what an upstream producer may send):

* ``ts`` is epoch seconds, epoch milliseconds, or an ISO-8601 string with a zone. A number is read
  as milliseconds when the header ``x-loopline-ts-unit: ms`` says so, or, with no header, when
  its magnitude is at least 1e11 (1e11 seconds is the year 5138; 1e11 milliseconds is 1973, so
  the two ranges cannot be confused for any real event). ``x-loopline-ts-unit: s`` forces seconds.
  An ISO string without a zone is refused: reading it in the host's zone would silently shift it.
  Times before 1970 or from 2100 on are refused, as are booleans, NaN and infinities.
* No number anywhere in the record may be NaN or infinite.
* The event id is the header ``x-loopline-event-id``, else the record's ``event_id``, else derived
  from the record's canonical JSON (so the same content always gets the same id, whatever its
  key order or spacing, and a redelivery is dropped as a duplicate).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loopline_core.errors import invalid
from loopline_core.events import derived_id
from loopline_core.jsonx import canonical, loads_strict

MS_THRESHOLD = 1e11
MIN_TIME = 0.0
MAX_TIME = 4102444800.0  # 2100-01-01T00:00:00Z
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class Envelope:
    event_id: str
    dataset: str
    source: str
    event_time: float
    ingest_time: float
    content_type: str
    payload: bytes
    entity_id: str
    redriven: bool = False
    """Republished from the dead letters after a fix: forwarded again even though its id was seen."""


def parse_time(value: Any, unit: str | None = None) -> float:
    """Epoch seconds from epoch seconds, epoch milliseconds or a zoned ISO-8601 string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid("event time must be a number or an ISO-8601 string", field="ts")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise invalid(f"event time {value[:64]!r} is not ISO-8601", field="ts") from exc
        if parsed.tzinfo is None:
            raise invalid(f"event time {value[:64]!r} has no zone (add Z or an offset)", field="ts")
        seconds = parsed.timestamp()
    else:
        if unit not in (None, "s", "ms"):
            raise invalid(f"x-loopline-ts-unit must be s or ms, not {unit[:16]!r}", field="ts")
        number = float(value)
        if not math.isfinite(number):
            raise invalid("event time must be finite", field="ts")
        millis = unit == "ms" or (unit is None and abs(number) >= MS_THRESHOLD)
        seconds = number / 1000.0 if millis else number
    if not MIN_TIME <= seconds < MAX_TIME:
        raise invalid(f"event time {value!r} is outside 1970..2100", field="ts")
    return seconds


def _event_id(header: str | None, payload: dict[str, Any], dataset: str) -> str:
    given = header if header is not None else payload.get("event_id")
    if given is None:
        return derived_id(dataset, canonical(payload))
    if not isinstance(given, str) or not given.strip() or len(given) > MAX_ID_LENGTH:
        raise invalid(f"event_id must be a non-empty string of at most {MAX_ID_LENGTH} characters",
                      field="event_id")
    return given


def wrap_json(dataset: str, source: str, raw: bytes, entity_field: str, now: float | None = None, *,
              event_id: str | None = None, ts_unit: str | None = None, redriven: bool = False) -> Envelope:
    """Envelope one JSON record (see the module docstring for the rules)."""
    payload = loads_strict(raw)
    if not isinstance(payload, dict):
        raise invalid("a record must be a JSON object")
    eid = _event_id(event_id, payload, dataset)
    ingest_time = time.time() if now is None else now
    event_time = parse_time(payload["ts"], ts_unit) if "ts" in payload else ingest_time
    entity = payload.get(entity_field, "")
    if isinstance(entity, dict | list):
        raise invalid(f"{entity_field} must be a string or a number", field=entity_field)
    return Envelope(eid, dataset, source, event_time, ingest_time, "application/json", raw, str(entity), redriven)
