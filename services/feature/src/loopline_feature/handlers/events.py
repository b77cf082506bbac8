"""on_valid and on_label: keep the offline log, the online table and the labels current."""

from __future__ import annotations

import json
from typing import Any

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.errors import invalid
from loopline_core.kafka import Record
from loopline_core.kafka.codec import proto

from loopline_feature.adapters.store import FeatureStore
from loopline_feature.domain.features import compute
from loopline_feature.metrics import LABELS, LOGGED


class EventHandlers:
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    decode_valid = staticmethod(proto(EventIngested, "metadata.event_id"))

    async def on_valid(self, msg: EventIngested, _record: Record) -> None:
        """Consumes ``loopline.valid.transactions``; writes the offline log and online row (by event id)."""
        txn = json.loads(msg.payload)
        t = msg.event_time.ToNanoseconds() / 1e9
        amount = float(txn["amount"])
        logged = await self.store.record(msg.metadata.event_id, txn["customer_id"], t, amount,
                                         lambda h: compute(amount, t, txn["merchant_category"], h))
        LOGGED.labels("new" if logged else "duplicate").inc()

    @staticmethod
    def decode_label(record: Record) -> dict[str, Any]:
        label = json.loads(record.value)
        if not isinstance(label, dict) or not isinstance(label.get("event_id"), str):
            raise invalid("a label needs a string event_id")
        if not isinstance(label.get("label"), int | float) or isinstance(label.get("label"), bool):
            raise invalid("a label needs a numeric label")
        return label

    async def on_label(self, label: dict[str, Any], record: Record) -> None:
        """Consumes ``loopline.labels.transactions``; upserts the label for its event id."""
        await self.store.label(label["event_id"], float(label["label"]),
                               float(label.get("ts", record.timestamp_ms / 1000)))
        LABELS.inc()
