"""Contract evolution, like a schema registry's BACKWARD rule: within a major, every record the
current contract accepts must still be accepted. Adding an optional field is compatible; removing,
renaming, retyping, making an optional field required, tightening a range, enum, length or pattern,
closing the record to unknown fields or lowering the payload cap is not: that is a new major
(``v<n+1>.json`` beside the old one, both accepted until the old one's ``accept_until``)."""

from __future__ import annotations

from typing import Any

from loopline_core.contracts.model import Contract

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_EXACT = ("pattern", "format", "multipleOf", "const", "uniqueItems", "propertyNames", "not", "anyOf", "oneOf",
          "allOf", "patternProperties", "items")
"""Constraints compared for equality: a new or changed one may refuse what was accepted."""
_OPENNESS = {"keep": 0, "drop": 0, "reject": 1}


def compatible(current: Contract, proposed: Contract) -> list[str]:
    """Why ``proposed`` cannot replace ``current`` as a new minor of the same major (empty: it can).

    A proposed contract of a newer major is a new major, accepted beside the current one: no reasons.
    """
    if proposed.dataset != current.dataset:
        return [f"dataset differs: {current.dataset} -> {proposed.dataset}"]
    if proposed.major > current.major:
        return []
    if proposed.major < current.major:
        return [f"v{proposed.major} is older than the current v{current.major}"]
    reasons: list[str] = []
    if proposed.minor < current.minor:
        reasons.append(f"version goes down: {current.version} -> {proposed.version}")
    reasons += _object(current.schema, proposed.schema, "")
    for attr, what in (("entity_field", "entity field"), ("event_time_field", "event-time field"),
                       ("ts_unit", "event-time unit"), ("event_id_field", "event-id field")):
        if getattr(current, attr) != getattr(proposed, attr):
            reasons.append(f"{what} changed: {getattr(current, attr)} -> {getattr(proposed, attr)}")
    if current.message_type is not None and proposed.message_type != current.message_type:
        reasons.append(f"message type changed: {current.message_type} -> {proposed.message_type}")
    if _OPENNESS[proposed.unknown_fields] > _OPENNESS[current.unknown_fields]:
        reasons.append(f"unknown fields: {current.unknown_fields} -> {proposed.unknown_fields} refuses records "
                       "accepted today")
    if proposed.max_payload_bytes < current.max_payload_bytes:
        reasons.append(f"payload cap lowered: {current.max_payload_bytes} -> {proposed.max_payload_bytes} bytes")
    if not reasons and proposed.minor == current.minor and proposed.schema != current.schema:
        reasons.append(f"the contract changed but its version did not: bump {current.version}")
    return reasons


def _object(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[str]:
    reasons: list[str] = []
    old_props: dict[str, Any] = old.get("properties") or {}
    new_props: dict[str, Any] = new.get("properties") or {}
    old_required, new_required = set(old.get("required") or ()), set(new.get("required") or ())
    for name, schema in old_props.items():
        path = prefix + name
        if name not in new_props:
            reasons.append(f"{path}: removed (a rename is a removal)")
            continue
        if name in new_required and name not in old_required:
            reasons.append(f"{path}: optional -> required")
        reasons += _field(schema, new_props[name], path)
    for name in new_props.keys() - old_props.keys():
        if name in new_required:
            reasons.append(f"{prefix}{name}: added as required (only an optional field may be added)")
    for name in sorted((new_required - old_required) - new_props.keys()):
        reasons.append(f"{prefix}{name}: required but not a property")
    return reasons


def _field(old: Any, new: Any, path: str) -> list[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new or new is True else [f"{path}: schema changed"]
    reasons: list[str] = []
    old_types, new_types = _types(old), _types(new)
    if new_types is not None and (old_types is None or not _covers(new_types, old_types)):
        reasons.append(f"{path}: type changed: {_fmt(old_types)} -> {_fmt(new_types)}")
    for key in _LOWER_BOUNDS:
        if key in new and (key not in old or new[key] > old[key]):
            reasons.append(f"{path}: {key} tightened: {old.get(key, 'none')} -> {new[key]}")
    for key in _UPPER_BOUNDS:
        if key in new and (key not in old or new[key] < old[key]):
            reasons.append(f"{path}: {key} tightened: {old.get(key, 'none')} -> {new[key]}")
    if "enum" in new:
        lost = [v for v in old.get("enum", [object()]) if v not in new["enum"]]
        if "enum" not in old or lost:
            reasons.append(f"{path}: enum narrowed" + (f" (drops {_short(lost)})" if "enum" in old else ""))
    for key in _EXACT:
        if key in new and new.get(key) != old.get(key):
            reasons.append(f"{path}: {key} {'changed' if key in old else 'added'}")
    if "properties" in old or "properties" in new:
        reasons += _object(old, new, path + ".")
    if old.get("additionalProperties") is not False and new.get("additionalProperties") is False:
        reasons.append(f"{path}: closed to unknown fields")
    return reasons


def _types(schema: dict[str, Any]) -> set[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    return {kind} if isinstance(kind, str) else set(kind)


def _covers(new: set[str], old: set[str]) -> bool:
    wider = set(new) | ({"integer"} if "number" in new else set())
    return old <= wider


def _fmt(types: set[str] | None) -> str:
    return "any" if types is None else "|".join(sorted(types))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
