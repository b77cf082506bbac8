"""on_valid and on_label: keep every view's event log and online rows, and the label log, current."""

from __future__ import annotations

from typing import Any

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.contracts import Contracts
from loopline_core.errors import LooplineError, invalid
from loopline_core.kafka import Item, Record
from loopline_core.kafka.codec import proto
from loopline_core.labels import Label, decode_label

from loopline_feature.adapters.catalog import Catalog
from loopline_feature.adapters.store import FeatureStore
from loopline_feature.domain.views import Event, FeatureView, ViewError
from loopline_feature.metrics import LABELS, LOGGED

_envelope = proto(EventIngested, "metadata.event_id")


class EventHandlers:
    def __init__(self, store: FeatureStore, catalog: Catalog, contracts: Contracts) -> None:
        self.store = store
        self.catalog = catalog
        self.contracts = contracts

    def decode_valid(self, record: Record) -> list[tuple[FeatureView, Event]]:
        """A valid record, read into an Event for each view it feeds (a record a view cannot read goes
        to the dead letters with the field that is wrong)."""
        msg = _envelope(record)
        payload = self._payload(msg)
        t = msg.event_time.seconds + msg.event_time.nanos / 1e9
        out = []
        for view in self.catalog.for_source(msg.dataset):
            entity = payload.get(view.entity)
            if isinstance(entity, bool) or not isinstance(entity, str | int) or entity == "":
                raise invalid(f"{view.entity} must be a non-empty string or an integer", field=view.entity)
            try:
                out.append((view, view.event(msg.metadata.event_id, str(entity), t, payload)))
            except ViewError as exc:
                raise invalid(f"view {view.ref}: {exc}") from exc
        return out

    def _payload(self, msg: EventIngested) -> dict[str, Any]:
        """The record in the envelope, JSON or protobuf, read by the contract major it met."""
        major = msg.contract_version.split(".", 1)[0]
        try:
            contract = (self.contracts.get(msg.dataset, int(major)) if major.isdigit()
                        else self.contracts.current(msg.dataset))
        except LooplineError as exc:  # no such contract: this record can never be read (dead letter)
            raise invalid(exc.message) from exc
        return contract.decode(msg.content_type or None, msg.payload)

    async def on_valid(self, items: list[Item[list[tuple[FeatureView, Event]]]]) -> None:
        """Consumes ``loopline.valid.<source>``; writes each view's log and online rows (keyed by
        event id) for the whole batch, one transaction per view."""
        by_view: dict[str, tuple[FeatureView, list[Event]]] = {}
        for item in items:
            for view, event in item.value:
                by_view.setdefault(view.ref, (view, []))[1].append(event)
        for view, events in by_view.values():
            logged = await self.store.record(view, events)
            LOGGED.labels(view.ref, "new").inc(logged)
            LOGGED.labels(view.ref, "duplicate").inc(len(events) - logged)

    @staticmethod
    def decode_label(record: Record) -> Label:
        return decode_label(record)

    async def on_label(self, items: list[Item[Label]]) -> None:
        """Consumes ``loopline.labels.<source>``; records the labels in one statement."""
        await self.store.label([i.value for i in items])
        LABELS.inc(len(items))
