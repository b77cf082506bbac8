"""Contracts as data: ``contracts/<dataset>/v<major>.json`` read into :class:`Contract` objects.

A file is JSON Schema 2020-12 plus an ``x-loopline`` object (see ``contracts/README.md``). A file
that does not parse, is not a valid schema or says something this module cannot honour is refused
with a one-line reason (:class:`ContractError`); the files beside it keep serving.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from loopline_core.contracts.explain import Violation
from loopline_core.contracts.schema import Checker, ContractSchemaError, check_schema
from loopline_core.errors import LooplineError, invalid, not_found
from loopline_core.jsonx import loads_strict

log = logging.getLogger(__name__)

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
UNKNOWN_FIELDS = ("keep", "drop", "reject")
"""keep: forwarded as sent; drop: removed before forwarding; reject: the record is refused."""
TS_UNITS = ("auto", "s", "ms", "iso")
_FILE = re.compile(r"v([1-9][0-9]*)\.json")
_VERSION = re.compile(r"([1-9][0-9]*)\.(0|[1-9][0-9]*)")
_ANNOTATION_KEYS = frozenset({"dataset", "version", "entity_field", "event_time", "event_id_field", "labels",
                              "unknown_fields", "max_payload_bytes", "message_type", "accept_until"})


class ContractError(ValueError):
    """A contract file refused, with a one-line reason naming the file."""


@dataclass(frozen=True, eq=False)
class Contract:
    """One major version of a dataset's contract (its newest minor)."""

    dataset: str
    version: str
    schema: dict[str, Any] = field(repr=False)
    entity_field: str
    event_time_field: str
    ts_unit: str
    event_id_field: str | None
    label_dataset: str | None
    label_key: str | None
    message_type: str | None
    unknown_fields: str
    max_payload_bytes: int
    accept_until: datetime | None = None
    path: Path | None = None
    checker: Checker = field(init=False, repr=False)
    _judge: Callable[[Any], list[Violation]] = field(init=False, repr=False)
    _drop: bool = field(init=False, repr=False)
    major: int = field(init=False)
    minor: int = field(init=False, repr=False)
    ref: str = field(init=False)
    """``<dataset>/v<major>``."""

    def __post_init__(self) -> None:
        checker = Checker(self.schema)
        object.__setattr__(self, "checker", checker)
        object.__setattr__(self, "_judge", checker.judge)
        object.__setattr__(self, "_drop", self.unknown_fields == "drop")
        major, minor = self.version.split(".")
        object.__setattr__(self, "major", int(major))
        object.__setattr__(self, "minor", int(minor))
        object.__setattr__(self, "ref", f"{self.dataset}/v{major}")


    @property
    def fields(self) -> frozenset[str]:
        return self.checker.properties

    def accepting(self, now: datetime) -> bool:
        return self.accept_until is None or now < self.accept_until

    def decode(self, content_type: str | None, payload: bytes) -> dict[str, Any]:
        """The record in ``payload``: JSON (strict: finite numbers) or, for a dataset that names a
        message type, binary protobuf read into a dict with the proto's field names (a field left
        unset is absent). Anything too big or unreadable raises INVALID_ARGUMENT with the reason."""
        if len(payload) > self.max_payload_bytes:
            raise invalid(f"payload of {len(payload)} bytes is over the {self.max_payload_bytes}-byte cap",
                          contract=self.ref, rule="size")
        kind = JSON if not content_type or content_type == JSON else content_type.split(";", 1)[0].strip().lower()
        if kind == JSON:
            record = loads_strict(payload)
            if not isinstance(record, dict):
                raise invalid("a record must be a JSON object", contract=self.ref, rule="type")
            return record
        if kind == PROTOBUF:
            if self.message_type is None:
                raise invalid(f"{self.ref} takes no protobuf (it names no message type)", contract=self.ref,
                              rule="content-type")
            msg = message_class(self.message_type)()
            try:
                msg.ParseFromString(payload)
            except DecodeError as exc:
                raise invalid(f"undecodable: not a {self.message_type} ({str(exc)[:100]})", contract=self.ref,
                              rule="decode") from exc
            return to_dict(msg)
        raise invalid(f"content type {kind[:64]!r} is neither {JSON} nor {PROTOBUF}", contract=self.ref,
                      rule="content-type")

    def judge(self, record: Any) -> tuple[dict[str, Any] | None, list[Violation]]:
        """The record as forwarded (unknown fields removed when the contract drops them) and [], or
        None and every rule it breaks. The validator's hot path: one pass over the record."""
        problems = self._judge(record)
        if problems:
            return None, problems
        if self._drop and not self.checker.properties.issuperset(record):
            return {k: v for k, v in record.items() if k in self.checker.properties}, problems
        return record, problems

    def conform(self, record: Any) -> dict[str, Any] | None:
        """The record as forwarded, or None when it breaks the contract."""
        return self.judge(record)[0]

    def violations(self, record: Any) -> list[Violation]:
        """Every broken rule as (field, rule, message); empty when the record conforms."""
        return list(self._judge(record))

    def check(self, record: Any) -> dict[str, Any]:
        """The record if it meets the contract (without unknown fields when the contract drops them);
        else INVALID_ARGUMENT naming the contract, the first field at fault and its rule."""
        out, problems = self.judge(record)
        if out is None:
            raise rejection(self, problems)
        return out


def rejection(contract: Contract, problems: list[Violation]) -> LooplineError:
    """The error for a record that broke ``contract``: short, since it travels in headers."""
    problems = problems or [Violation("", "schema", "record breaks the contract")]
    reason = "; ".join(p.message for p in problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5
                                                           else "")
    return invalid(reason[:400], contract=contract.ref, field=problems[0].field, rule=problems[0].rule)


class Contracts:
    """Every contract in a directory, by dataset, newest major first."""

    def __init__(self, contracts: Iterable[Contract], refused: dict[str, str] | None = None) -> None:
        self._by_dataset: dict[str, list[Contract]] = {}
        for c in contracts:
            self._by_dataset.setdefault(c.dataset, []).append(c)
        for majors in self._by_dataset.values():
            majors.sort(key=lambda c: c.major, reverse=True)
        self.refused = dict(refused or {})
        """File -> one-line reason, for each file that was not loaded."""

    @classmethod
    def load(cls, path: str | Path, *, strict: bool = False) -> Contracts:
        """Read ``<path>/<dataset>/v<major>.json``. A refused file is logged with its reason and left
        out (the others serve); with ``strict`` it raises :class:`ContractError` instead."""
        root = Path(path)
        if not root.is_dir():
            raise ContractError(f"{root}: no contracts directory")
        loaded: list[Contract] = []
        refused: dict[str, str] = {}
        for file in sorted(root.glob("*/*.json")):
            try:
                loaded.append(load_file(file))
            except ContractError as exc:
                if strict:
                    raise
                refused[str(file)] = str(exc)
                log.warning("contract refused: %s", exc, extra={"file": str(file)})
        return cls(loaded, refused)

    def datasets(self) -> list[str]:
        return sorted(self._by_dataset)

    def all(self, dataset: str) -> list[Contract]:
        """Every major of ``dataset``, newest first (accepted or not)."""
        majors = self._by_dataset.get(dataset)
        if not majors:
            known = ", ".join(self.datasets()) or "none"
            raise not_found(f"no contract for dataset {dataset[:64]!r} (known: {known})")
        return list(majors)

    def accepted(self, dataset: str, now: datetime | None = None) -> list[Contract]:
        """The majors still accepted at ``now`` (newest first): those not past their ``accept_until``."""
        at = now or datetime.now(UTC)
        return [c for c in self.all(dataset) if c.accepting(at)]

    def current(self, dataset: str) -> Contract:
        """The newest major of ``dataset``."""
        return self.all(dataset)[0]

    def get(self, dataset: str, major: int) -> Contract:
        for c in self.all(dataset):
            if c.major == major:
                return c
        raise not_found(f"no contract {dataset[:64]}/v{major}")


def load_file(path: str | Path) -> Contract:
    """One contract file; :class:`ContractError` with a one-line reason when it cannot serve."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ContractError(f"{file}: unreadable ({type(exc).__name__})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ContractError(f"{file}: not JSON: {str(exc).splitlines()[0][:160]}") from None
    try:
        return parse(doc, file)
    except (ContractSchemaError, ValueError) as exc:
        raise ContractError(f"{file}: {' '.join(str(exc).split())[:300]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(doc: Any, path: Path | None = None) -> Contract:
    """A contract from its parsed document (``path``, when given, must agree with what it says)."""
    check_schema(doc)
    meta = doc.get("x-loopline")
    if not _is_object(meta):
        raise ValueError("x-loopline (the Loopline annotations) is missing or not an object")
    unknown = set(meta) - _ANNOTATION_KEYS
    if unknown:
        raise ValueError(f"x-loopline has unknown keys {sorted(unknown)}")
    dataset = _text(meta, "dataset", pattern=r"[a-z][a-z0-9_-]{0,62}")
    version = _text(meta, "version")
    parts = _VERSION.fullmatch(version)
    if parts is None:
        raise ValueError(f"x-loopline.version must be <major>.<minor> like 1.0, not {version[:20]!r}")
    if path is not None:
        name = _FILE.fullmatch(path.name)
        if name is None or path.parent.name != dataset or name.group(1) != parts.group(1):
            raise ValueError(f"a contract for {dataset} {version} belongs in {dataset}/v{parts.group(1)}.json")
    properties = doc.get("properties") or {}
    if doc.get("type") != "object" or not isinstance(properties, dict):
        raise ValueError('a contract must have "type": "object" and its properties')
    entity = _text(meta, "entity_field")
    ts_field, unit = _event_time(meta.get("event_time"))
    event_id = meta.get("event_id_field")
    labels = meta.get("labels")
    if labels is not None and (not _is_object(labels) or set(labels) - {"dataset", "key"}):
        raise ValueError('x-loopline.labels must be {"dataset": ..., "key": ...}')
    for key, value in (("entity_field", entity), ("event_time.field", ts_field), ("event_id_field", event_id),
                        ("labels.key", (labels or {}).get("key"))):
        if value is not None and value not in properties:
            raise ValueError(f"x-loopline.{key} {value!r} is not a property of the schema")
    unknown_fields, cap = _limits(doc, meta)
    message_type = meta.get("message_type")
    if message_type is not None:
        _message_fields_match(_text(meta, "message_type"), properties)
    return Contract(
        dataset=dataset, version=version, schema=doc, entity_field=entity, event_time_field=ts_field, ts_unit=unit,
        event_id_field=_opt_text(meta, "event_id_field"), label_dataset=_opt_text(labels or {}, "dataset"),
        label_key=_opt_text(labels or {}, "key"), message_type=message_type, unknown_fields=unknown_fields,
        max_payload_bytes=cap, accept_until=_time(meta.get("accept_until")), path=path)


def _limits(doc: dict[str, Any], meta: dict[str, Any]) -> tuple[str, int]:
    unknown_fields = meta.get("unknown_fields", "reject")
    if unknown_fields not in UNKNOWN_FIELDS:
        raise ValueError(f"x-loopline.unknown_fields must be one of {list(UNKNOWN_FIELDS)}")
    closed = doc.get("additionalProperties") is False
    if closed != (unknown_fields == "reject"):
        raise ValueError('"additionalProperties": false goes with unknown_fields "reject", and only with it')
    cap = meta.get("max_payload_bytes")
    if isinstance(cap, bool) or not isinstance(cap, int) or not 0 < cap <= 16 * 1024 * 1024:
        raise ValueError("x-loopline.max_payload_bytes must be an integer in 1..16777216")
    return unknown_fields, cap


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _event_time(spec: Any) -> tuple[str, str]:
    if not _is_object(spec) or set(spec) - {"field", "unit"}:
        raise ValueError('x-loopline.event_time must be {"field": ..., "unit": ...}')
    unit = spec.get("unit", "auto")
    if unit not in TS_UNITS:
        raise ValueError(f"x-loopline.event_time.unit must be one of {list(TS_UNITS)}")
    return _text(spec, "field"), unit


def _text(obj: dict[str, Any], key: str, pattern: str | None = None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or (pattern and not re.fullmatch(pattern, value)):
        raise ValueError(f"x-loopline {key} must be a {'name like transactions' if pattern else 'non-empty string'}")
    return value


def _opt_text(obj: dict[str, Any], key: str) -> str | None:
    return None if obj.get(key) is None else _text(obj, key)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None:
        raise ValueError(f"x-loopline.accept_until {str(value)[:40]!r} is not an ISO-8601 time")
    if at.tzinfo is None:
        raise ValueError("x-loopline.accept_until needs a zone (Z or an offset)")
    return at


def message_class(full_name: str) -> type[Message]:
    """The generated class of a protobuf message, imported from ``loopline.<area>.v<n>`` if need be."""
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(full_name)
    except KeyError:
        package = full_name.rsplit(".", 1)[0]
        try:
            mod = importlib.import_module(package)
            for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
                if info.name.endswith("_pb2"):
                    importlib.import_module(f"{package}.{info.name}")
            desc = pool.FindMessageTypeByName(full_name)
        except (ImportError, KeyError):
            raise ValueError(f"x-loopline.message_type {full_name!r} is not a generated protobuf message") from None
    cls: type[Message] = message_factory.GetMessageClass(desc)
    return cls


def _message_fields_match(full_name: str, properties: dict[str, Any]) -> None:
    fields = {f.name for f in message_class(full_name).DESCRIPTOR.fields}
    extra = sorted(fields - set(properties))
    if extra:
        raise ValueError(f"message {full_name} has fields the schema does not: {extra}")


def to_dict(msg: Message) -> dict[str, Any]:
    """A message as the record a JSON producer would send: set fields only, proto field names."""
    out: dict[str, Any] = {}
    for f, value in msg.ListFields():
        if f.message_type is not None:
            if f.message_type.GetOptions().map_entry:
                out[f.name] = {k: to_dict(v) if isinstance(v, Message) else v for k, v in value.items()}
            elif f.is_repeated:
                out[f.name] = [to_dict(v) for v in value]
            else:
                out[f.name] = to_dict(value)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            names = f.enum_type.values_by_number if f.enum_type is not None else {}
            out[f.name] = [names[v].name if v in names else v for v in value] if f.is_repeated else \
                (names[value].name if value in names else value)
        else:
            out[f.name] = list(value) if f.is_repeated else value
    return out
