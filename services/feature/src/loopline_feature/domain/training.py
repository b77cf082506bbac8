"""Point-in-time training sets. Pure.

Each labelled event gets the view's vector as of its own event time, from the entity's admitted
events strictly before it (whenever they arrived), and the newest label known at the set's ``as_of``
(the store selects those). It is the same computation the online path makes at a request time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loopline_feature.domain.views import FeatureView, Timeline


@dataclass(frozen=True)
class Row:
    event_id: str
    entity_id: str
    event_time: float
    label_time: float
    label: float
    numbers: tuple[float, ...]
    strings: tuple[str, ...]


@dataclass
class TrainingSet:
    view: str
    as_of: float
    feature_names: list[str]
    event_ids: list[str] = field(default_factory=list)
    entity_ids: list[str] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)
    label_times: list[float] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    features: list[list[float]] = field(default_factory=list)
    # The view's string fields per row (for example country): not model inputs, but what an
    # evaluation slices the test set by.
    strings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def positives(self) -> int:
        return sum(1 for y in self.labels if y >= 0.5)


def history_span(view: FeatureView, rows: Sequence[Row]) -> tuple[float, float]:
    """The event-time range of history the rows' features read."""
    longest = max((a.window_s for a in view.aggregates), default=0.0)
    return min(r.event_time for r in rows) - max(longest, view.ttl_s), max(r.event_time for r in rows)


def build(view: FeatureView, as_of: float, rows: Sequence[Row], timelines: Mapping[str, Timeline]) -> TrainingSet:
    """The set: rows in event-time order, features in the view's model order."""
    ts = TrainingSet(view.ref, as_of, list(view.vector), strings={name: [] for name in view.strings})
    empty = Timeline(width=len(view.numbers))
    for r in sorted(rows, key=lambda r: (r.event_time, r.event_id)):
        request = view.request_of(r.numbers, r.strings)
        ts.features.append(view.values(timelines.get(r.entity_id, empty), r.event_time, request, view.vector))
        ts.event_ids.append(r.event_id)
        ts.entity_ids.append(r.entity_id)
        ts.event_times.append(r.event_time)
        ts.label_times.append(r.label_time)
        ts.labels.append(r.label)
        for name, value in zip(view.strings, r.strings, strict=True):
            ts.strings[name].append(value)
    return ts
