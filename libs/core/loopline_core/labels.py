"""Labels: the one decoder every consumer of ``loopline.labels.<dataset>`` uses.

A label arrives as the protobuf ``loopline.labels.v1.Label`` (content type
``application/x-protobuf``) or as a JSON object ``{"event_id": "...", "label": 0|1|number|bool,
"ts": <label time>}``. The label time follows the rule for event times (``loopline_core.times``: epoch seconds,
milliseconds from 1e11 on, or zoned ISO-8601); absent, it is the Kafka record's timestamp.
Anything else raises INVALID_ARGUMENT, so the record goes to the dead letters with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from loopline.labels.v1.label_pb2 import Label as LabelPb

from loopline_core.errors import invalid
from loopline_core.jsonx import loads_strict
from loopline_core.kafka.records import CONTENT_TYPE, Record
from loopline_core.times import parse_time

PROTOBUF = "application/x-protobuf"
MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Label:
    dataset: str
    event_id: str
    """The labelled event."""
    value: float
    labelled_at: float
    """When the label became known (epoch seconds)."""


def decode_label(record: Record) -> Label:
    """A label from a ``loopline.labels.<dataset>`` record (the dataset is the topic's last part)."""
    dataset = record.topic.rsplit(".", 1)[-1]
    fallback = record.timestamp_ms / 1000.0
    if (record.header(CONTENT_TYPE) or "").split(";")[0].strip() == PROTOBUF:
        try:
            msg = LabelPb.FromString(record.value)
        except DecodeError as exc:
            raise invalid("a protobuf label that does not decode") from exc
        at = msg.labelled_at.ToNanoseconds() / 1e9 if msg.HasField("labelled_at") else fallback
        return Label(msg.dataset or dataset, _event_id(msg.event_id), _value(msg.value),
                     parse_time(at, None, "ts", "label time"))
    body = loads_strict(record.value)
    if not isinstance(body, dict):
        raise invalid("a label must be a JSON object")
    at = body.get("ts", fallback)
    return Label(dataset, _event_id(body.get("event_id")), _value(body.get("label")),
                 parse_time(at, None, "ts", "label time"))


def _event_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        raise invalid(f"a label needs the labelled event's event_id (a string of 1..{MAX_ID_LENGTH} characters)",
                      field="event_id")
    return value


def _value(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid("a label needs a finite numeric (or boolean) label", field="label")
    return float(value)

