"""Turning an upstream record into an envelope: event id, event time, entity key. Pure."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loopline_core.errors import invalid
from loopline_core.events import derived_id


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


def parse_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string."""
    if isinstance(value, bool):
        raise invalid("event time must be a number or an ISO-8601 string")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise invalid(f"event time {value!r} is not ISO-8601") from exc
    raise invalid("event time must be a number or an ISO-8601 string")


def wrap_json(dataset: str, source: str, raw: bytes, entity_field: str, now: float | None = None) -> Envelope:
    """Envelope a JSON record. Its id is ``event_id`` when given, else derived from its bytes, so a
    redelivered record gets the same id and is dropped as a duplicate."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise invalid("a record must be a JSON object")
    event_id = payload.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        raise invalid("event_id must be a non-empty string")
    ingest_time = time.time() if now is None else now
    event_time = parse_time(payload["ts"]) if "ts" in payload else ingest_time
    return Envelope(event_id or derived_id(dataset, raw.decode()), dataset, source, event_time, ingest_time,
                    "application/json", raw, str(payload.get(entity_field, "")))
