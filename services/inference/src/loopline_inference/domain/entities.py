"""Requests that name entities instead of carrying a feature vector. Pure.

A caller with no feature code sends ``entity_ids`` (BYTES, shape [n] or [n, 1]) and, for views with
request-time (on-demand) features, ``request`` (BYTES, same shape): one JSON object per row with the
values being scored, e.g. ``{"amount": 12.5, "merchant_category": "fuel"}``. Inference fetches the
vectors from the feature service in one call.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from loopline_core.errors import invalid

ENTITY_INPUT = "entity_ids"
REQUEST_INPUT = "request"
MAX_ID_BYTES = 256


@dataclass(frozen=True)
class BytesTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None
    elements: list[bytes]
    """Typed contents (``bytes_contents``), used when ``raw`` is None."""


@dataclass(frozen=True)
class EntityRequest:
    entity_ids: list[str]
    numbers: list[dict[str, float]]
    strings: list[dict[str, str]]


def split_raw_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """OIP's raw BYTES encoding: each element is a 4-byte little-endian length, then its bytes."""
    out: list[bytes] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(raw):
            raise invalid(f"input {name!r}: raw BYTES ends after {len(out)} of {count} elements")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise invalid(f"input {name!r}: element {len(out)} claims {n} bytes, {len(raw) - at} remain")
        out.append(raw[at:at + n])
        at += n
    if at != len(raw):
        raise invalid(f"input {name!r}: {len(raw) - at} bytes left over after {count} elements")
    return out


def _elements(t: BytesTensor) -> list[bytes]:
    if t.datatype != "BYTES":
        raise invalid(f"input {t.name!r} must be BYTES, got {t.datatype}")
    if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)) or t.shape[0] < 1:
        raise invalid(f"input {t.name!r} must have shape [batch] or [batch, 1], got {list(t.shape)}")
    n = t.shape[0]
    if t.raw is not None:
        return split_raw_bytes(t.raw, n, t.name)
    if len(t.elements) != n:
        raise invalid(f"input {t.name!r} holds {len(t.elements)} elements; shape {list(t.shape)} needs {n}")
    return t.elements


def _text(b: bytes, name: str, i: int) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        raise invalid(f"input {name!r} element {i} is not UTF-8") from None


def _row(b: bytes, i: int) -> tuple[dict[str, float], dict[str, str]]:
    try:
        obj = json.loads(_text(b, REQUEST_INPUT, i))
    except json.JSONDecodeError as exc:
        raise invalid(f"input {REQUEST_INPUT!r} element {i} is not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise invalid(f"input {REQUEST_INPUT!r} element {i} must be a JSON object")
    numbers: dict[str, float] = {}
    strings: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise invalid(f"input {REQUEST_INPUT!r} element {i}: {k!r} must be a number or a string")
        if isinstance(v, str):
            strings[k] = v
        elif not math.isfinite(v):
            raise invalid(f"input {REQUEST_INPUT!r} element {i}: {k!r} must be finite")
        else:
            numbers[k] = float(v)
    return numbers, strings


def entity_request(tensors: list[BytesTensor]) -> EntityRequest:
    """The entities (and request rows) of a request, or INVALID_ARGUMENT saying what is wrong."""
    by_name = {t.name: t for t in tensors}
    unknown = sorted(set(by_name) - {ENTITY_INPUT, REQUEST_INPUT})
    if unknown or ENTITY_INPUT not in by_name or len(by_name) != len(tensors):
        raise invalid(f"an entity request takes {ENTITY_INPUT!r} and optionally {REQUEST_INPUT!r} "
                      f"(each once), got {[t.name for t in tensors]}")
    ids = [_text(b, ENTITY_INPUT, i) for i, b in enumerate(_elements(by_name[ENTITY_INPUT]))]
    for i, e in enumerate(ids):
        if not e or len(e.encode()) > MAX_ID_BYTES:
            raise invalid(f"input {ENTITY_INPUT!r} element {i} must be 1..{MAX_ID_BYTES} bytes")
    numbers: list[dict[str, float]] = [{} for _ in ids]
    strings: list[dict[str, str]] = [{} for _ in ids]
    if REQUEST_INPUT in by_name:
        rows = _elements(by_name[REQUEST_INPUT])
        if len(rows) != len(ids):
            raise invalid(f"input {REQUEST_INPUT!r} has {len(rows)} rows for {len(ids)} entities")
        for i, b in enumerate(rows):
            numbers[i], strings[i] = _row(b, i)
    return EntityRequest(ids, numbers, strings)


def is_entity_request(names: list[str]) -> bool:
    return ENTITY_INPUT in names
