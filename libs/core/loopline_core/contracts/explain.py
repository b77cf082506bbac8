"""Contract checks compiled to closures: every rule a record breaks, for schemas without combinators.

``jsonschema`` explains any schema but takes ~90 µs for a flat transaction, and ``fastjsonschema``
decides in ~2 µs but stops at the first error, so a rejected record would pay for both; this
decides and explains in one pass over the record, as fast as the hand checks it replaced. A schema
with ``anyOf``/``oneOf``/``allOf``/``not`` goes the other way (``fastjsonschema`` decides,
``jsonschema`` explains; see :class:`loopline_core.contracts.schema.Checker`). A property test
holds this to ``jsonschema``'s 2020-12 verdict.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

from jsonschema import FormatChecker

COMBINATORS = frozenset({"anyOf", "oneOf", "allOf", "not"})


class Violation(NamedTuple):
    """One broken rule of a contract."""

    field: str
    rule: str
    message: str


WORDS = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "a boolean",
         "object": "an object", "array": "an array", "null": "null"}
_FORMATS = FormatChecker()


def uses_combinators(schema: Any) -> bool:
    if isinstance(schema, dict):
        return bool(COMBINATORS & schema.keys()) or any(uses_combinators(v) for v in schema.values())
    if isinstance(schema, list):
        return any(uses_combinators(v) for v in schema)
    return False


Check = Callable[[Any, str], "list[Violation] | None"]
"""A compiled schema node: the violations of a value at a path, or None when it conforms."""


def compile_schema(schema: Any) -> Callable[[Any], list[Violation]]:
    """One function for a schema without combinators: every violation of a record, [] when it conforms.

    Closures are built once per contract, so checking a record walks only the record's own keys
    with no schema lookups, and a path string is built only for a field at fault."""
    node = _compile(schema)
    empty: list[Violation] = []

    def check(record: Any) -> list[Violation]:
        return node(record, "") or empty

    return check


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda _v, _p: None
    if schema is False:
        return lambda _v, p: [Violation(p, "unknown", f"{p or 'record'} is not in the contract")]
    type_ok, type_says = _type(schema.get("type"))
    checks = [c for c in (_enum(schema), _number(schema), _string(schema), _object(schema), _array(schema))
              if c is not None]

    def node(value: Any, path: str) -> list[Violation] | None:
        if type_ok is not None and not type_ok(value):
            if not path:
                return [Violation("", "type", f"record must be {type_says}")]
            return [Violation(path, "type", f"{path} must be {type_says}, got {json_type(value)}")]
        if type(value) is float and value - value != 0.0:
            return [Violation(path, "finite", f"{path or 'record'} must be a finite number")]
        out: list[Violation] | None = None
        for check in checks:
            found = check(value, path)
            if found:
                out = found if out is None else out + found
        return out

    return node


def _type(kind: Any) -> tuple[Callable[[Any], bool] | None, str]:
    if kind is None:
        return None, ""
    kinds = [kind] if isinstance(kind, str) else list(kind)
    allowed = frozenset(t for k in kinds for t in _PY[k])
    integral = "integer" in kinds and "number" not in kinds
    says = " or ".join(WORDS[k] for k in kinds)
    if integral:
        return (lambda v: type(v) in allowed or (type(v) is float and v.is_integer())), says
    return (lambda v: type(v) in allowed), says


_PY: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "number": (int, float),
                                    "integer": (int,), "boolean": (bool,), "null": (type(None),)}


def _enum(schema: dict[str, Any]) -> Check | None:
    if "enum" not in schema and "const" not in schema:
        return None
    choices = list(schema["enum"]) if "enum" in schema else [schema["const"]]

    def check(value: Any, path: str) -> list[Violation] | None:
        if _member(value, choices):
            return None
        return [Violation(path, "enum", f"{path or 'record'}={short(value)} is not one of {short(choices)}")]

    return check


def _number(schema: dict[str, Any]) -> Check | None:
    bounds = [(k, schema[k]) for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf")
              if k in schema]
    if not bounds:
        return None
    low, xlow = schema.get("minimum"), schema.get("exclusiveMinimum")
    high, xhigh = schema.get("maximum"), schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")

    def check(value: Any, path: str) -> list[Violation] | None:
        if type(value) is not int and type(value) is not float:
            return None
        out = None
        name = path or "record"
        if (low is not None and value < low) or (xlow is not None and value <= xlow):
            out = [Violation(path, "range", f"{name}={short(value)} is below {low if low is not None else xlow}")]
        if (high is not None and value > high) or (xhigh is not None and value >= xhigh):
            found = Violation(path, "range", f"{name}={short(value)} is above {high if high is not None else xhigh}")
            out = [found] if out is None else [*out, found]
        if step is not None and not _multiple(value, step):
            found = Violation(path, "multipleOf", f"{name}={short(value)} is not a multiple of {step}")
            out = [found] if out is None else [*out, found]
        return out

    return check


def _multiple(value: float, step: float) -> bool:
    if isinstance(step, float) or isinstance(value, float):
        try:
            return (value / step).is_integer()
        except OverflowError:
            return False
    return value % step == 0


def _string(schema: dict[str, Any]) -> Check | None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    pattern = _regex(schema["pattern"]) if "pattern" in schema else None
    fmt = schema.get("format")
    if low is None and high is None and pattern is None and fmt is None:
        return None

    def check(value: Any, path: str) -> list[Violation] | None:
        if type(value) is not str:
            return None
        out = []
        name = path or "record"
        size = len(value)
        if (low is not None and size < low) or (high is not None and size > high):
            if low == high:
                out.append(Violation(path, "length", f"{name} must have length {low}"))
            elif low is not None and size < low:
                out.append(Violation(path, "length", f"{name} must have at least {low} characters"))
            else:
                out.append(Violation(path, "length", f"{name} must have at most {high} characters"))
        if pattern is not None and pattern.search(value) is None:
            out.append(Violation(path, "pattern", f"{name}={short(value)} does not match {short(pattern.pattern)}"))
        if fmt is not None and not _FORMATS.conforms(value, fmt):
            out.append(Violation(path, "format", f"{name}={short(value)} is not a valid {fmt}"))
        return out or None

    return check


def _object(schema: dict[str, Any]) -> Check | None:
    keys = ("required", "properties", "patternProperties", "additionalProperties", "propertyNames", "minProperties",
            "maxProperties")
    if not any(k in schema for k in keys):
        return None
    required = tuple(schema.get("required", ()))
    properties = {name: _compile(sub) for name, sub in (schema.get("properties") or {}).items()}
    patterns = [(_regex(p), _compile(sub)) for p, sub in (schema.get("patternProperties") or {}).items()]
    extra = schema.get("additionalProperties", True)
    other = None if extra is True else _compile(extra)
    names = _compile(schema["propertyNames"]) if "propertyNames" in schema else None
    fewest, most = schema.get("minProperties"), schema.get("maxProperties")

    def check(value: Any, path: str) -> list[Violation] | None:
        if type(value) is not dict:
            return None
        out: list[Violation] | None = None
        for r in required:
            if r not in value:
                where = f"{path}.{r}" if path else r
                out = (out or []) + [Violation(where, "required", f"{where} is required")]
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            sub = properties.get(key)
            found = sub(item, where) if sub is not None else None
            matched = sub is not None
            for regex, pattern_check in patterns:
                if regex.search(key):
                    matched = True
                    found = (found or []) + (pattern_check(item, where) or [])
            if not matched and other is not None:
                found = other(item, where)
            if names is not None:
                bad = names(key, where)
                if bad:
                    found = (found or []) + [Violation(where, "propertyNames", f"{where}: {b.message}") for b in bad]
            if found:
                out = found if out is None else out + found
        name = path or "record"
        if fewest is not None and len(value) < fewest:
            out = (out or []) + [Violation(path, "minProperties", f"{name} needs {fewest} fields")]
        if most is not None and len(value) > most:
            out = (out or []) + [Violation(path, "maxProperties", f"{name} takes at most {most} fields")]
        return out

    return check


def _array(schema: dict[str, Any]) -> Check | None:
    if not any(k in schema for k in ("items", "minItems", "maxItems", "uniqueItems")):
        return None
    items = _compile(schema["items"]) if "items" in schema else None
    fewest, most, unique = schema.get("minItems"), schema.get("maxItems"), schema.get("uniqueItems", False)

    def check(value: Any, path: str) -> list[Violation] | None:
        if type(value) is not list:
            return None
        out: list[Violation] = []
        name = path or "record"
        if items is not None:
            for n, item in enumerate(value):
                out += items(item, f"{path}.{n}" if path else str(n)) or []
        if fewest is not None and len(value) < fewest:
            out.append(Violation(path, "length", f"{name} must have at least {fewest} items"))
        if most is not None and len(value) > most:
            out.append(Violation(path, "length", f"{name} must have at most {most} items"))
        if unique and not _unique(value):
            out.append(Violation(path, "uniqueItems", f"{name} has repeated items"))
        return out or None

    return check


def _member(value: Any, choices: list[Any]) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    return any(_same(value, c) for c in choices)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and (isinstance(a, int | float) == isinstance(b, int | float))


def _unique(items: list[Any]) -> bool:
    return not any(_same(items[i], items[j]) for i in range(len(items)) for j in range(i))


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def short(value: Any) -> str:
    """A value for a message: producers send 200 KB strings too, and reasons travel in headers."""
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def generate(schema: dict[str, Any]) -> Callable[[Any], list[Violation]]:
    """The check of a record schema as one generated Python function, top-level fields inlined.

    The same rules and messages as :func:`compile_schema` (nested schemas are handed to it), with no
    call per field: this is the validator's hot path, and it must keep pace with the hand checks
    it replaced. Numbers of declared fields must be finite (JSON input is already; protobuf doubles
    are checked when decoded)."""
    if schema.get("type") != "object" or any(k in schema for k in ("patternProperties", "propertyNames",
                                                                    "minProperties", "maxProperties", "enum",
                                                                    "const")):
        return compile_schema(schema)
    env: dict[str, Any] = {"V": Violation, "M": _MISSING, "short": short, "json_type": json_type,
                           "member": _member, "multiple": _multiple, "FORMATS": _FORMATS}
    lines = ["def check(data):",
             "    if type(data) is not dict:",
             "        return [V('', 'type', 'record must be a JSON object')]",
             "    out = []"]
    required = set(schema.get("required", ()))
    properties: dict[str, Any] = schema.get("properties") or {}
    for n, (name, sub) in enumerate(properties.items()):
        env[f"N{n}"] = name
        lines.append(f"    v = data.get(N{n}, M)")
        lines.append("    if v is M:")
        lines.append(f"        out.append(V(N{n}, 'required', N{n} + ' is required'))" if name in required
                     else "        pass")
        lines.append("    else:")
        lines += ["        " + line for line in _field_lines(sub, n, env)]
    for name in sorted(required - properties.keys()):
        env[f"R_{len(env)}"] = name
        lines.append(f"    if R_{len(env) - 1} not in data:")
        lines.append(f"        out.append(V(R_{len(env) - 1}, 'required', R_{len(env) - 1} + ' is required'))")
    extra = schema.get("additionalProperties", True)
    if extra is not True:
        env["KNOWN"] = frozenset(properties)
        env["OTHER"] = _compile(extra)
        lines += ["    if not KNOWN.issuperset(data):",
                  "        for key in data:",
                  "            if key not in KNOWN:",
                  "                out += OTHER(data[key], key) or []"]
    lines.append("    return out")
    code = "\n".join(lines)
    exec(compile(code, f"<contract check {id(schema):x}>", "exec"), env)  # noqa: S102 - code built above from a checked schema
    check: Callable[[Any], list[Violation]] = env["check"]
    return check


_MISSING = object()


def _field_lines(sub: Any, n: int, env: dict[str, Any]) -> list[str]:
    """Statements checking ``v`` (present, named ``N<n>``) against ``sub``, appending to ``out``."""
    if not isinstance(sub, dict) or any(k in sub for k in ("properties", "patternProperties", "additionalProperties",
                                                           "propertyNames", "minProperties", "maxProperties",
                                                           "items", "minItems", "maxItems", "uniqueItems")):
        env[f"S{n}"] = _compile(sub)
        return [f"out += S{n}(v, N{n}) or []"]
    out: list[str] = []
    kinds = sub.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    numeric = kinds is None or "number" in kinds or "integer" in kinds
    indent = ""
    if kinds is not None:
        allowed = [t.__name__ if t is not type(None) else "NoneType" for k in kinds for t in _PY[k]]
        env["NoneType"] = type(None)
        test = " and ".join(f"t is not {a}" for a in dict.fromkeys(allowed))
        if "integer" in kinds and "number" not in kinds:
            test = f"({test}) and not (t is float and v.is_integer())"
        env[f"T{n}"] = " or ".join(WORDS[k] for k in kinds)
        out += ["t = type(v)",
                f"if {test}:",
                f"    out.append(V(N{n}, 'type', N{n} + ' must be ' + T{n} + ', got ' + json_type(v)))",
                "else:"]
        indent = "    "
    else:
        out += ["t = type(v)", "if True:"]
        indent = "    "
    body: list[str] = []
    if numeric:
        body += ["if t is float and v - v != 0.0:",
                 f"    out.append(V(N{n}, 'finite', N{n} + ' must be a finite number'))"]
    if "enum" in sub or "const" in sub:
        env[f"E{n}"] = list(sub["enum"]) if "enum" in sub else [sub["const"]]
        body += [f"if not member(v, E{n}):",
                 f"    out.append(V(N{n}, 'enum', N{n} + '=' + short(v) + ' is not one of ' + short(E{n})))"]
    body += _number_lines(sub, n, env) + _string_lines(sub, n, env)
    if not body:
        body = ["pass"]
    out += [indent + line for line in body]
    return out


def _number_lines(sub: dict[str, Any], n: int, env: dict[str, Any]) -> list[str]:
    body: list[str] = []
    number_rules = [(k, sub[k]) for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf")
                    if k in sub]
    if number_rules:
        body.append("if t is int or t is float:")
        low_key = "minimum" if "minimum" in sub else "exclusiveMinimum" if "exclusiveMinimum" in sub else None
        high_key = "maximum" if "maximum" in sub else "exclusiveMaximum" if "exclusiveMaximum" in sub else None
        for key, op, word in ((low_key, "<" if low_key == "minimum" else "<=", "below"),
                              (high_key, ">" if high_key == "maximum" else ">=", "above")):
            if key is not None:
                env[f"{word}{n}"] = sub[key]
                say = f"' is {word} ' + str({word}{n})"
                body += [f"    if v {op} {word}{n}:",
                         f"        out.append(V(N{n}, 'range', N{n} + '=' + short(v) + {say}))"]
        if "multipleOf" in sub:
            env[f"step{n}"] = sub["multipleOf"]
            body += [f"    if not multiple(v, step{n}):",
                     f"        out.append(V(N{n}, 'multipleOf', N{n} + '=' + short(v) + ' is not a multiple of ' "
                     f"+ str(step{n})))"]
    return body


def _string_lines(sub: dict[str, Any], n: int, env: dict[str, Any]) -> list[str]:
    body: list[str] = []
    low, high = sub.get("minLength"), sub.get("maxLength")
    if low is not None or high is not None or "pattern" in sub or "format" in sub:
        body.append("if t is str:")
        if low is not None or high is not None:
            env[f"lo{n}"], env[f"hi{n}"] = low, high
            too_short = f"len(v) < lo{n}" if low is not None else "False"
            too_long = f"len(v) > hi{n}" if high is not None else "False"
            if low == high:
                body += [f"    if {too_short} or {too_long}:",
                         f"        out.append(V(N{n}, 'length', N{n} + ' must have length ' + str(lo{n})))"]
            else:
                body += [f"    if {too_short}:",
                         f"        out.append(V(N{n}, 'length', N{n} + ' must have at least ' + str(lo{n}) + "
                         "' characters'))",
                         f"    elif {too_long}:",
                         f"        out.append(V(N{n}, 'length', N{n} + ' must have at most ' + str(hi{n}) + "
                         "' characters'))"]
        if "pattern" in sub:
            env[f"P{n}"] = _regex(sub["pattern"])
            body += [f"    if P{n}.search(v) is None:",
                     f"        out.append(V(N{n}, 'pattern', N{n} + '=' + short(v) + ' does not match ' + "
                     f"short(P{n}.pattern)))"]
        if "format" in sub:
            env[f"F{n}"] = sub["format"]
            body += [f"    if not FORMATS.conforms(v, F{n}):",
                     f"        out.append(V(N{n}, 'format', N{n} + '=' + short(v) + ' is not a valid ' + F{n}))"]
    return body
