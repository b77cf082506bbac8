"""Helpers for the metadata every event carries as field 1."""

from __future__ import annotations

import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from loopline.common.v1.metadata_pb2 import EventMetadata


def timestamp(epoch_s: float | None = None) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int((time.time() if epoch_s is None else epoch_s) * 1e9))
    return ts


def derived_id(*parts: str) -> str:
    """A deterministic event id derived from its cause, so a redelivered cause yields the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def metadata(producer: str, event_id: str | None = None, correlation_id: str = "",
             occurred_at: float | None = None) -> EventMetadata:
    return EventMetadata(event_id=event_id or str(uuid.uuid4()), occurred_at=timestamp(occurred_at),
                         producer=producer, correlation_id=correlation_id)
