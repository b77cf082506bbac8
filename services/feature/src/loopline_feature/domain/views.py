"""Declarative feature views: one definition, computed the same way online and offline. Pure.

A view file (``features/<name>/v<version>.yaml``, see ``features/README.md``) names an entity, a
source dataset, window aggregates over the entity's events and on-demand features computed from
the event being scored. Every value of an instant ``t`` is a function of the entity's events in
``[t - window, t)`` and of the request row, through :meth:`FeatureView.values`: the online path calls
it with ``t`` = the request time, the offline builder with ``t`` = each labelled event's time, both
over a :class:`Timeline` of the same admitted events. That is what makes the two equal.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

AGGREGATES = ("count", "sum", "mean", "min", "max", "std")
ON_DEMAND = ("value", "log1p", "ratio", "hour_before", "in_set")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class ViewError(ValueError):
    """A view definition or a request that does not fit it; the message is one line."""


def duration(text: Any, what: str) -> float:
    """Seconds from ``"90s"``, ``"15m"``, ``"24h"`` or ``"7d"``."""
    match = _DURATION.match(str(text))
    if isinstance(text, bool) or match is None:
        raise ViewError(f"{what} must be a duration like 30m, 24h or 7d, not {str(text)[:32]!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True, slots=True)
class Aggregate:
    name: str
    fn: str
    window_s: float
    field: int | None
    """Index of the numeric field it reads (None for count)."""


@dataclass(frozen=True, slots=True)
class OnDemand:
    name: str
    fn: str
    field: str | None = None
    of: str | None = None
    offset: float = 0.0
    hour: int = 0
    values: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Request:
    """One entity's request-time inputs: the event being scored."""

    numbers: Mapping[str, float] = field(default_factory=dict)
    strings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """What a view keeps of a source event."""

    event_id: str
    entity_id: str
    event_time: float
    numbers: tuple[float, ...]
    strings: tuple[str, ...]


class Timeline:
    """One entity's admitted events in time order: ``times`` and one column per numeric field."""

    __slots__ = ("columns", "times")

    def __init__(self, times: Sequence[float] = (), columns: Sequence[Sequence[float]] = (), width: int = 0) -> None:
        order = sorted(range(len(times)), key=lambda i: (times[i], *(c[i] for c in columns)))
        self.times = [float(times[i]) for i in order]
        self.columns = [[float(c[i]) for i in order] for c in columns] if columns else [[] for _ in range(width)]

    @classmethod
    def ordered(cls, times: list[float], flat: list[float], width: int) -> Timeline:
        """From rows already in time order, numbers flattened row by row (as the online row keeps them)."""
        tl = cls.__new__(cls)
        tl.times = times
        tl.columns = [flat[j::width] for j in range(width)]
        return tl

    def flat(self) -> list[float]:
        """The numbers row by row (the online row's layout)."""
        return [v for row in zip(*self.columns, strict=True) for v in row] if self.columns else []

    def add(self, t: float, numbers: Sequence[float]) -> None:
        """Insert one event in time order (a late one lands where it belongs)."""
        i = bisect_left(self.times, t)
        while i < len(self.times) and self.times[i] == t and [c[i] for c in self.columns] < list(numbers):
            i += 1
        self.times.insert(i, t)
        for column, value in zip(self.columns, numbers, strict=True):
            column.insert(i, value)

    def trim(self, before: float) -> bool:
        """Forget events older than ``before``; whether any were."""
        cut = bisect_left(self.times, before)
        if cut:
            del self.times[:cut]
            for column in self.columns:
                del column[:cut]
        return cut > 0

    def span(self, t: float, window_s: float) -> tuple[int, int]:
        return bisect_left(self.times, t - window_s), bisect_left(self.times, t)


@dataclass(frozen=True)
class FeatureView:
    name: str
    version: int
    entity: str
    source: str
    numbers: tuple[str, ...]
    strings: tuple[str, ...]
    ttl_s: float
    lateness_s: float
    aggregates: tuple[Aggregate, ...]
    on_demand: tuple[OnDemand, ...]
    vector: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def feature_names(self) -> list[str]:
        return [a.name for a in self.aggregates] + [o.name for o in self.on_demand]

    @property
    def aggregate_names(self) -> list[str]:
        return [a.name for a in self.aggregates]

    @property
    def retention_s(self) -> float:
        """How far behind an entity's newest event the online row keeps events: a request at any time
        down to ``newest - lateness`` still sees whole windows."""
        return self.ttl_s + self.lateness_s

    def select(self, names: Sequence[str]) -> list[str]:
        """The features asked for (all of the model vector when none are named)."""
        if not names:
            return list(self.vector)
        known = set(self.feature_names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ViewError(f"view {self.ref} has no feature {unknown[0][:64]!r}")
        return list(names)

    def needs_request(self, names: Sequence[str]) -> bool:
        wanted = set(names)
        return any(o.name in wanted and o.fn != "hour_before" for o in self.on_demand)

    def admits(self, watermark: float | None, event_time: float) -> bool:
        """Whether an event arriving now counts: not older than the entity's newest event by more
        than the allowed lateness (``watermark`` is that newest time, None before any event)."""
        return watermark is None or event_time >= watermark - self.lateness_s

    def request_of(self, numbers: Sequence[float], strings: Sequence[str]) -> Request:
        """The request row an event with these kept values would have been scored with."""
        return Request(dict(zip(self.numbers, numbers, strict=True)), dict(zip(self.strings, strings, strict=True)))

    def event(self, event_id: str, entity_id: str, event_time: float, payload: Mapping[str, Any]) -> Event:
        """Read a source record's payload into an Event, or say which field is wrong."""
        numbers = []
        for name in self.numbers:
            value = payload.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ViewError(f"{name} must be a finite number")
            numbers.append(float(value))
        strings = []
        for name in self.strings:
            value = payload.get(name)
            if not isinstance(value, str):
                raise ViewError(f"{name} must be a string")
            strings.append(value)
        return Event(event_id, entity_id, event_time, tuple(numbers), tuple(strings))

    def aggregates_at(self, timeline: Timeline, t: float) -> tuple[dict[str, float], float | None]:
        """Every aggregate over ``[t - window, t)``, and the newest event time within the TTL (None:
        nothing within it, so the entity is not found and every aggregate keeps its default)."""
        lo, hi = timeline.span(t, self.ttl_s)
        if hi == lo:
            return dict.fromkeys(self.aggregate_names, 0.0), None
        out: dict[str, float] = {}
        times = timeline.times
        for window, aggs in self._by_window:  # each window's bounds and each column's slice once
            a, b = bisect_left(times, t - window, lo, hi), hi
            slices: dict[int, list[float]] = {}
            for agg in aggs:
                if agg.field is None:
                    out[agg.name] = float(b - a)
                    continue
                values = slices.get(agg.field)
                if values is None:
                    values = slices[agg.field] = timeline.columns[agg.field][a:b]
                out[agg.name] = _aggregate(agg.fn, values)
        return out, times[hi - 1]

    @cached_property
    def _by_window(self) -> list[tuple[float, list[Aggregate]]]:
        groups: dict[float, list[Aggregate]] = {}
        for agg in self.aggregates:
            groups.setdefault(agg.window_s, []).append(agg)
        return list(groups.items())

    def values(self, timeline: Timeline, t: float, request: Request | None, names: Sequence[str]) -> list[float]:
        """The named features of one entity at ``t``."""
        aggs, _ = self.aggregates_at(timeline, t)
        return self.assemble(aggs, t, request, names)

    def assemble(self, aggs: Mapping[str, float], t: float, request: Request | None,
                 names: Sequence[str]) -> list[float]:
        """The named features from the aggregates at ``t`` and the request row."""
        by_name = {o.name: o for o in self.on_demand}
        return [aggs[n] if n in aggs else _on_demand(by_name[n], aggs, t, request) for n in names]


def _aggregate(fn: str, values: list[float]) -> float:
    if not values:
        return 0.0
    if fn == "sum":
        return math.fsum(values)
    if fn == "mean":
        return math.fsum(values) / len(values)
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    mean = math.fsum(values) / len(values)  # std: population, two passes (no cancellation)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def _on_demand(o: OnDemand, aggs: Mapping[str, float], t: float, request: Request | None) -> float:
    if o.fn == "hour_before":
        return 1.0 if datetime.fromtimestamp(t, UTC).hour < o.hour else 0.0
    if request is None:
        raise ViewError(f"{o.name} needs the request row (the event being scored)")
    if o.fn == "in_set":
        assert o.field is not None
        if o.field not in request.strings:
            raise ViewError(f"{o.name} needs the request string {o.field!r}")
        return 1.0 if request.strings[o.field] in o.values else 0.0
    assert o.field is not None
    number = request.numbers.get(o.field)
    if number is None or not math.isfinite(number):
        raise ViewError(f"{o.name} needs the finite request number {o.field!r}")
    if o.fn == "value":
        return float(number)
    if o.fn == "log1p":
        if number <= -1.0:
            raise ViewError(f"{o.name}: log1p of {number!r} is undefined")
        return math.log1p(number)
    assert o.of is not None
    denominator = aggs[o.of] + o.offset
    return float(number) / denominator if denominator else 0.0


def parse(doc: Mapping[str, Any]) -> FeatureView:
    """A FeatureView from a view file's mapping; a ViewError (one line) says what is wrong."""
    if not isinstance(doc, Mapping):
        raise ViewError("a view file must be a mapping")
    name = _text(doc, "name")
    if not _NAME.match(name):
        raise ViewError(f"view name {name[:64]!r} must be lower_snake_case")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ViewError("version must be a positive integer")
    numbers = tuple(_names(doc.get("numbers", []), "numbers"))
    strings = tuple(_names(doc.get("strings", []), "strings"))
    ttl = duration(doc.get("ttl"), "ttl")
    lateness = duration(doc.get("allowed_lateness", "0s"), "allowed_lateness")
    aggregates = tuple(_aggregates(doc.get("aggregates", []), numbers, ttl))
    agg_names = {a.name for a in aggregates}
    on_demand = tuple(_on_demands(doc.get("on_demand", []), numbers, strings, agg_names))
    everything = [a.name for a in aggregates] + [o.name for o in on_demand]
    duplicated = {n for n in everything if everything.count(n) > 1}
    if duplicated:
        raise ViewError(f"feature {sorted(duplicated)[0]!r} is defined twice")
    vector = tuple(_names(doc.get("vector", everything), "vector"))
    missing = [n for n in vector if n not in everything]
    if missing:
        raise ViewError(f"vector names {missing[0]!r}, which the view does not define")
    return FeatureView(name, version, _text(doc, "entity"), _text(doc, "source"), numbers, strings, ttl, lateness,
                       aggregates, on_demand, vector)


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ViewError(f"{key} must be a non-empty string")
    return value


def _names(value: Any, what: str) -> Iterable[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ViewError(f"{what} must be a list of names")
    return value


def _aggregates(items: Any, numbers: tuple[str, ...], ttl: float) -> Iterable[Aggregate]:
    if not isinstance(items, list):
        raise ViewError("aggregates must be a list")
    for item in items:
        name = _text(item, "name") if isinstance(item, Mapping) else ""
        if not name or item.get("fn") not in AGGREGATES:
            raise ViewError(f"aggregate {name or item!r} needs a name and fn in {', '.join(AGGREGATES)}")
        window = duration(item.get("window"), f"{name}.window")
        if window > ttl:
            raise ViewError(f"{name}.window is longer than the view's ttl")
        fld = item.get("field")
        if item["fn"] == "count":
            index = None
        elif fld not in numbers:
            raise ViewError(f"{name}.field must be one of the view's numbers {list(numbers)}")
        else:
            index = numbers.index(fld)
        yield Aggregate(name, item["fn"], window, index)


def _on_demands(items: Any, numbers: tuple[str, ...], strings: tuple[str, ...],
                aggregates: set[str]) -> Iterable[OnDemand]:
    if not isinstance(items, list):
        raise ViewError("on_demand must be a list")
    for item in items:
        name = _text(item, "name") if isinstance(item, Mapping) else ""
        fn = item.get("fn") if name else None
        if fn not in ON_DEMAND:
            raise ViewError(f"on-demand feature {name or item!r} needs a name and fn in {', '.join(ON_DEMAND)}")
        if fn == "hour_before":
            hour = item.get("hour")
            if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 24:
                raise ViewError(f"{name}.hour must be an hour 0..24")
            yield OnDemand(name, fn, hour=hour)
            continue
        fld = item.get("field")
        if fn == "in_set":
            values = item.get("values")
            if fld not in strings or not isinstance(values, list):
                raise ViewError(f"{name} needs field in the view's strings and a list of values")
            yield OnDemand(name, fn, field=fld, values=frozenset(map(str, values)))
            continue
        if fld not in numbers:
            raise ViewError(f"{name}.field must be one of the view's numbers {list(numbers)}")
        if fn == "ratio":
            of, offset = item.get("of"), item.get("offset", 0.0)
            if of not in aggregates or isinstance(offset, bool) or not isinstance(offset, int | float):
                raise ViewError(f"{name} needs of: an aggregate of this view, and a numeric offset")
            yield OnDemand(name, fn, field=fld, of=of, offset=float(offset))
            continue
        yield OnDemand(name, fn, field=fld)


