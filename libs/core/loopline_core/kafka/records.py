"""A consumed record, decoupled from the client library, and the header names Loopline uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

CONTENT_TYPE = "content-type"
MESSAGE_TYPE = "x-loopline-type"
EVENT_ID = "x-loopline-event-id"
"""Set by a producer (or `loopline dlq redrive`) to fix a record's event id."""
SOURCE = "x-loopline-source"
"""Names the upstream source of a raw record (default: its topic)."""
TS_UNIT = "x-loopline-ts-unit"
"""``s`` or ``ms``: the unit of a numeric ``ts`` (default: milliseconds from 1e11 on)."""
REDRIVEN_FROM = "x-loopline-redriven-from"
"""Set by `loopline dlq redrive`: the dead letter's source; ingest forwards such a record again."""
REPLAY = "x-loopline-replay"
"""Set by `loopline replay` on a raw record: ingest forwards it again even though its id was seen, and
keeps the header on what it publishes (so the raw archive does not archive it twice)."""
CONTRACT = "x-loopline-contract"
"""Set by the validator on ``loopline.valid.*``: the contract (``<dataset>/v<major>``) a record met."""
DLQ_REASON = "x-loopline-dlq-reason"
DLQ_KIND = "x-loopline-dlq-kind"
DLQ_SOURCE = "x-loopline-dlq-source"
DLQ_ATTEMPTS = "x-loopline-dlq-attempts"
DLQ_DETAIL = "x-loopline-dlq-"
EXHAUSTED = "exhausted"
"""The dead-letter kind of a record whose transient failures outlasted the retry budget."""


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0
    tp: TopicPartition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tp", TopicPartition(self.topic, self.partition))

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def of(cls, raw: Any) -> Record:
        """From an aiokafka ``ConsumerRecord``."""
        return cls(raw.topic, raw.partition, raw.offset, raw.key, raw.value or b"", tuple(raw.headers or ()),
                   raw.timestamp)
