"""The JSON Schema side of a contract: what a contract may say, and one compiled check per contract.

A contract is JSON Schema 2020-12. Records are checked by a validator that ``fastjsonschema``
compiles to Python (it implements draft-07), so a contract may use only the keywords whose meaning
is the same in both drafts; anything else is refused when the file is loaded, not guessed at.
The compiled check decides; for a rejected record ``jsonschema``'s 2020-12 validator (with its
format checker) explains, listing every broken rule as (field, rule, message).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError

from loopline_core.contracts.explain import WORDS, Violation, generate, join, json_type, short, uses_combinators
from loopline_core.jsonx import finite

DIALECT = "https://json-schema.org/draft/2020-12/schema"

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment"})
"""Words that say something about a field and check nothing."""
ASSERTIONS = frozenset({
    "type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "format", "minItems", "maxItems", "uniqueItems", "minProperties",
    "maxProperties", "required",
})
APPLICATORS = frozenset({
    "properties", "patternProperties", "additionalProperties", "propertyNames", "items", "anyOf", "oneOf",
    "allOf", "not",
})
"""Keywords meaning the same in draft-07 and 2020-12 (``items`` only in its one-schema form)."""
TOP_ONLY = frozenset({"$schema", "$id", "x-loopline"})
FORMATS = frozenset({"date", "date-time", "email", "ipv4", "ipv6"})
"""Formats both validators know; others would be checked by one and not the other."""


class ContractSchemaError(ValueError):
    """A contract's schema is not one this module can honour (one line)."""


def check_schema(schema: Any) -> None:
    """Refuse a schema that is not valid 2020-12 or uses a keyword the compiled check cannot honour."""
    if not isinstance(schema, dict):
        raise ContractSchemaError("the contract must be a JSON object")
    if schema.get("$schema") != DIALECT:
        raise ContractSchemaError(f"$schema must be {DIALECT}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ContractSchemaError(f"not a valid JSON Schema 2020-12 at {where}: {_line(exc.message)}") from None
    for path, node in _nodes(schema, "#"):
        allowed = ANNOTATIONS | ASSERTIONS | APPLICATORS | (TOP_ONLY if path == "#" else frozenset())
        for key in node:
            if key not in allowed:
                raise ContractSchemaError(f"keyword {key!r} at {path} is not supported (allowed: the draft-07/2020-12 "
                                    "common core)")
        if isinstance(node.get("items"), list):
            raise ContractSchemaError(f"items at {path} must be one schema")
        if "format" in node and node["format"] not in FORMATS:
            raise ContractSchemaError(f"format {node['format']!r} at {path} is not supported (use one of "
                                f"{sorted(FORMATS)})")


def _nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema with its JSON pointer (booleans are schemas too, with nothing to check)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key in ("properties", "patternProperties"):
        for name, sub in (node.get(key) or {}).items():
            yield from _nodes(sub, f"{path}/{key}/{name}")
    for key in ("additionalProperties", "propertyNames", "items", "not"):
        if key in node:
            yield from _nodes(node[key], f"{path}/{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for n, sub in enumerate(node.get(key) or []):
            yield from _nodes(sub, f"{path}/{key}/{n}")


class Checker:
    """A compiled check for one schema, and the explanation of a failure."""

    def __init__(self, schema: dict[str, Any]) -> None:
        body = {k: v for k, v in schema.items() if k not in TOP_ONLY}
        self.properties = frozenset(schema.get("properties") or ())
        self.slow = Draft202012Validator(schema, format_checker=FormatChecker())
        self.compiled = None if uses_combinators(body) else generate(body)
        self.fast: Callable[[Any], Any] = fastjsonschema.compile(body, use_default=False)

    def judge(self, record: Any) -> list[Violation]:
        """The hot path: every broken rule, [] when the record conforms (one pass when compiled)."""
        if self.compiled is not None:
            return self.compiled(record)
        try:
            self.fast(record)
        except fastjsonschema.JsonSchemaValueException:
            return self.violations(record) or [Violation("", "schema", "record breaks the contract")]
        return [] if finite(record) else self.violations(record)

    def passes(self, record: Any) -> bool:
        return not self.judge(record)

    def violations(self, record: Any) -> list[Violation]:
        """Every broken rule of ``record`` (empty when it conforms)."""
        if not isinstance(record, dict):
            return [Violation("", "type", "record must be a JSON object")]
        if self.compiled is not None:
            return list(self.compiled(record))
        out: list[Violation] = []
        for error in sorted(self.slow.iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path]):
            out += _explain(error)
        if not out:
            try:
                self.fast(record)
            except fastjsonschema.JsonSchemaValueException as exc:  # they disagree: say what failed
                field = str(exc.name or "").removeprefix("data").lstrip(".")
                out.append(Violation(field, str(exc.rule or "schema"), _line(str(exc.message))))
        out += [Violation(f, "finite", f"{f} must be a finite number") for f in _non_finite(record, "")]
        return out


def _explain(error: ValidationError) -> list[Violation]:  # noqa: PLR0911 - one answer per keyword
    field = ".".join(str(p) for p in error.absolute_path)
    rule: str
    rule, value, instance = str(error.validator), error.validator_value, error.instance
    name = field or "record"
    if rule == "required":  # one error per missing property, named in its message
        missing = [p for p in value if error.message == f"{p!r} is a required property"]
        return [Violation(join(field, p), "required", f"{join(field, p)} is required") for p in missing[:1]]
    if rule == "additionalProperties" and isinstance(instance, dict):
        known = set((error.schema or {}).get("properties") or ()) if isinstance(error.schema, dict) else set()
        return [Violation(join(field, k), "unknown", f"{join(field, k)} is not in the contract")
                for k in instance if k not in known][:8]
    if rule == "type":
        kinds = value if isinstance(value, list) else [value]
        if not field and not isinstance(instance, dict):
            return [Violation("", "type", "record must be a JSON object")]
        return [Violation(field, "type", f"{name} must be {' or '.join(WORDS.get(str(k), str(k)) for k in kinds)}, "
                                         f"got {json_type(instance)}")]
    if rule in ("minimum", "exclusiveMinimum"):
        return [Violation(field, "range", f"{name}={short(instance)} is below {value}")]
    if rule in ("maximum", "exclusiveMaximum"):
        return [Violation(field, "range", f"{name}={short(instance)} is above {value}")]
    if rule in ("enum", "const"):
        choices = value if rule == "enum" else [value]
        return [Violation(field, "enum", f"{name}={short(instance)} is not one of {short(choices)}")]
    if rule in ("minLength", "maxLength"):
        schema = error.schema if isinstance(error.schema, dict) else {}
        if schema.get("minLength") == schema.get("maxLength"):
            return [Violation(field, "length", f"{name} must have length {value}")]
        word = "at least" if rule == "minLength" else "at most"
        return [Violation(field, "length", f"{name} must have {word} {value} characters")]
    if rule == "pattern":
        return [Violation(field, "pattern", f"{name}={short(instance)} does not match {short(value)}")]
    if rule == "format":
        return [Violation(field, "format", f"{name}={short(instance)} is not a valid {value}")]
    return [Violation(field, rule, f"{name}: {_line(error.message)}")]


def _line(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= 200 else one[:197] + "..."


def _non_finite(value: Any, path: str) -> list[str]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _non_finite(v, join(path, str(k)))]
    if isinstance(value, list):
        return [f for n, v in enumerate(value) for f in _non_finite(v, join(path, str(n)))]
    return []
