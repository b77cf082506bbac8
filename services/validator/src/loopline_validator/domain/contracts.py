"""Data contracts: required fields, types, ranges, enums. Pure; versioned by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from loopline_core.errors import invalid


@dataclass(frozen=True)
class Field:
    name: str
    kind: type | tuple[type, ...]
    required: bool = True
    min: float | None = None
    max: float | None = None
    choices: frozenset[str] | None = None
    length: int | None = None


@dataclass(frozen=True)
class Contract:
    dataset: str
    version: str
    fields: tuple[Field, ...]

    @property
    def ref(self) -> str:
        return f"{self.dataset}/{self.version}"

    def violations(self, record: Any) -> list[tuple[str, str, str]]:
        """Every broken rule as (field, rule, message); empty when the record conforms."""
        if not isinstance(record, dict):
            return [("", "type", "record must be a JSON object")]
        out = []
        for f in self.fields:
            if f.name not in record or record[f.name] is None:
                if f.required:
                    out.append((f.name, "required", f"{f.name} is required"))
                continue
            value: Any = record[f.name]
            if not _is(value, f.kind):
                out.append((f.name, "type", f"{f.name} must be {_kind(f.kind)}, got {type(value).__name__}"))
                continue
            if isinstance(value, float) and not math.isfinite(value):
                out.append((f.name, "finite", f"{f.name} must be a finite number"))
                continue
            if f.min is not None and value < f.min:
                out.append((f.name, "range", f"{f.name}={_short(value)} is below {f.min}"))
            if f.max is not None and value > f.max:
                out.append((f.name, "range", f"{f.name}={_short(value)} is above {f.max}"))
            if f.choices is not None and value not in f.choices:
                out.append((f.name, "enum", f"{f.name}={_short(value)} is not one of {sorted(f.choices)}"))
            if f.length is not None and len(value) != f.length:
                out.append((f.name, "length", f"{f.name} must have length {f.length}"))
        return out

    def check(self, record: Any) -> None:
        problems = self.violations(record)
        if problems:
            field, rule, _ = problems[0]
            raise invalid("; ".join(p[2] for p in problems), contract=self.ref, field=field, rule=rule)


def _short(value: Any) -> str:
    """A value for a message: outside producers send 200 KB strings too, and reasons travel in headers."""
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not a number here (JSON true is not 1)."""
    return not isinstance(value, bool) and isinstance(value, kind)


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {"int": "a number", "float": "a number", "str": "a string"}
    return " or ".join(dict.fromkeys(words.get(k.__name__, k.__name__) for k in kinds))


TRANSACTIONS_V1 = Contract("transactions", "v1", (
    Field("event_id", str, required=False),  # ingest derives one from the canonical JSON when absent
    Field("customer_id", str),
    Field("merchant_id", str),
    Field("amount", (int, float), min=0, max=1_000_000),
    Field("currency", str, length=3),
    Field("country", str, length=2),
    Field("merchant_category", str),
    Field("ts", (int, float, str)),
    Field("device", str, required=False),
))

CONTRACTS = {c.dataset: c for c in (TRANSACTIONS_V1,)}
