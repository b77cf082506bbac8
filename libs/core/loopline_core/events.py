"""Helpers for the metadata every event carries as field 1."""

from __future__ import annotations

import math
import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from loopline.common.v1.metadata_pb2 import EventMetadata


def timestamp(epoch_s: float | None = None) -> Timestamp:
    t = time.time() if epoch_s is None else epoch_s
    seconds = math.floor(t)
    return Timestamp(seconds=seconds, nanos=min(int((t - seconds) * 1e9), 999_999_999))


def derived_id(*parts: str) -> str:
    """A deterministic event id derived from its cause, so a redelivered cause yields the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def metadata(producer: str, event_id: str | None = None, correlation_id: str = "",
             occurred_at: float | None = None) -> EventMetadata:
    return EventMetadata(event_id=event_id or str(uuid.uuid4()), occurred_at=timestamp(occurred_at),
                         producer=producer, correlation_id=correlation_id)
