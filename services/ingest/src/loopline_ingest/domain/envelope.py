"""Turning an upstream record into an envelope: event id, event time, entity key. Pure.

The dataset's contract (``contracts/<dataset>/v<major>.json``) names the fields: the entity key,
the event time and its unit, the event id. Below, ``ts`` and ``event_id`` stand for those.

Input rules (what an upstream producer may send):

* JSON (content type ``application/json``, the default) or, for a dataset whose contract names a
  message type, binary protobuf (``application/x-protobuf``). The envelope keeps the bytes and the
  content type as sent. A payload over the contract's cap, or one that does not decode, is refused.

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

import time
from dataclasses import dataclass
from typing import Any

from loopline_core.contracts import Contract
from loopline_core.errors import invalid
from loopline_core.events import derived_id
from loopline_core.jsonx import canonical, loads_strict
from loopline_core.times import parse_time

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
    replay: str | None = None
    """The ``x-loopline-replay`` header of a record republished from the raw archive: forwarded again
    even though its id was seen, and the header goes on with it."""


def _event_id(header: str | None, payload: dict[str, Any], dataset: str, field: str | None) -> str:
    given = header if header is not None else payload.get(field) if field is not None else None
    if given is None:
        return derived_id(dataset, canonical(payload))
    if not isinstance(given, str) or not given.strip() or len(given) > MAX_ID_LENGTH:
        raise invalid(f"{field or 'event_id'} must be a non-empty string of at most {MAX_ID_LENGTH} characters",
                      field=field or "event_id")
    return given


_UNITS = {"auto": None, "s": "s", "ms": "ms", "iso": "iso"}


def wrap(contract: Contract, source: str, raw: bytes, now: float | None = None, *, content_type: str | None = None,
         event_id: str | None = None, ts_unit: str | None = None, redriven: bool = False,
         replay: str | None = None) -> Envelope:
    """Envelope one record of ``contract``'s dataset (see the module docstring for the rules);
    ``ts_unit`` (the header) overrides the contract's unit for a numeric event time."""
    payload = contract.decode(content_type, raw)
    kind = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return _wrap(contract.dataset, source, raw, payload, kind, now, entity_field=contract.entity_field,
                 time_field=contract.event_time_field, id_field=contract.event_id_field,
                 event_id=event_id, ts_unit=ts_unit if ts_unit is not None else _UNITS[contract.ts_unit],
                 redriven=redriven, replay=replay)


def wrap_json(dataset: str, source: str, raw: bytes, entity_field: str, now: float | None = None, *,
              event_id: str | None = None, ts_unit: str | None = None, redriven: bool = False) -> Envelope:
    """Envelope one JSON record with the default field names (``ts``, ``event_id``) and no contract."""
    payload = loads_strict(raw)
    if not isinstance(payload, dict):
        raise invalid("a record must be a JSON object")
    return _wrap(dataset, source, raw, payload, "application/json", now, entity_field=entity_field,
                 time_field="ts", id_field="event_id", event_id=event_id, ts_unit=ts_unit, redriven=redriven)


def _wrap(dataset: str, source: str, raw: bytes, payload: dict[str, Any], content_type: str, now: float | None, *,
          entity_field: str, time_field: str, id_field: str | None, event_id: str | None, ts_unit: str | None,
          redriven: bool, replay: str | None = None) -> Envelope:
    eid = _event_id(event_id, payload, dataset, id_field)
    ingest_time = time.time() if now is None else now
    event_time = parse_time(payload[time_field], ts_unit, time_field) if time_field in payload else ingest_time
    entity = payload.get(entity_field, "")
    if isinstance(entity, dict | list):
        raise invalid(f"{entity_field} must be a string or a number", field=entity_field)
    return Envelope(eid, dataset, source, event_time, ingest_time, content_type, raw, str(entity), redriven, replay)
