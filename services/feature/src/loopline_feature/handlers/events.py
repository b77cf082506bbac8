"""on_valid and on_label: keep the offline log, the online table and the labels current, a batch at a time."""

from __future__ import annotations

import math
from typing import Any

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.errors import invalid
from loopline_core.jsonx import loads_strict
from loopline_core.kafka import Item, Record
from loopline_core.kafka.codec import proto

from loopline_feature.adapters.store import FeatureStore, Transaction
from loopline_feature.metrics import LABELS, LOGGED

_envelope = proto(EventIngested, "metadata.event_id")


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"{name} must be a non-empty string", field=name)
    return value


class EventHandlers:
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    @staticmethod
    def decode_valid(record: Record) -> Transaction:
        """A valid transaction envelope, read into the fields the feature view needs."""
        msg = _envelope(record)
        txn = loads_strict(msg.payload)
        if not isinstance(txn, dict):
            raise invalid("a transaction must be a JSON object")
        amount = txn.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(float(amount)):
            raise invalid("amount must be a finite number", field="amount")
        return Transaction(msg.metadata.event_id, _text(txn, "customer_id"), msg.event_time.ToNanoseconds() / 1e9,
                           float(amount), _text(txn, "merchant_category"))

    async def on_valid(self, items: list[Item[Transaction]]) -> None:
        """Consumes ``loopline.valid.transactions``; writes the offline log and online rows (keyed by
        event id) for the whole batch in one transaction."""
        logged = await self.store.record([i.value for i in items])
        LOGGED.labels("new").inc(logged)
        LOGGED.labels("duplicate").inc(len(items) - logged)

    @staticmethod
    def decode_label(record: Record) -> tuple[str, float, float]:
        """``(event_id, label, labelled_at)`` from a label record."""
        label = loads_strict(record.value)
        if not isinstance(label, dict) or not isinstance(label.get("event_id"), str) or not label["event_id"]:
            raise invalid("a label needs a string event_id")
        value = label.get("label")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("a label needs a numeric label")
        ts = label.get("ts", record.timestamp_ms / 1000)
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts < 4102444800:
            raise invalid("a label's ts must be epoch seconds")
        return label["event_id"], float(value), float(ts)

    async def on_label(self, items: list[Item[tuple[str, float, float]]]) -> None:
        """Consumes ``loopline.labels.transactions``; upserts the labels by event id in one statement."""
        await self.store.label([i.value for i in items])
        LABELS.inc(len(items))
