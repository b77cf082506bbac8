"""on_ingested: ``loopline.ingested.<dataset>`` -> ``loopline.valid.<dataset>`` or its DLQ, a batch at a time."""

from __future__ import annotations

from dataclasses import dataclass

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.errors import invalid
from loopline_core.jsonx import loads_strict
from loopline_core.kafka import Item, Publisher, Record, TopicNamer
from loopline_core.kafka.codec import proto

from loopline_validator.domain.contracts import CONTRACTS
from loopline_validator.metrics import VALIDATED

_envelope = proto(EventIngested, "metadata.event_id")


@dataclass(frozen=True, slots=True)
class Checked:
    """A record that met its contract."""

    dataset: str
    contract: str


class IngestedHandler:
    def __init__(self, publisher: Publisher, namer: TopicNamer) -> None:
        self.publisher = publisher
        self.namer = namer

    def decode(self, record: Record) -> Checked:
        """Parse the envelope and check its payload against the dataset's contract.

        A record that breaks its contract raises INVALID_ARGUMENT: the bus sends it to
        ``loopline.dlq.<dataset>`` with the reason, the contract version and the field in headers.
        """
        msg = _envelope(record)
        contract = CONTRACTS.get(msg.dataset)
        if contract is None:
            raise invalid(f"no contract for dataset {msg.dataset[:64]!r}")
        try:
            payload = loads_strict(msg.payload)
            contract.check(payload)
        except Exception:
            VALIDATED.labels(msg.dataset, "rejected").inc()
            raise
        return Checked(msg.dataset, contract.ref)

    async def on_ingested(self, items: list[Item[Checked]]) -> None:
        """Consumes ``loopline.ingested.<dataset>``; valid records go on to ``loopline.valid.<dataset>``
        unchanged (same key, same bytes), tagged with the contract they met, in one flush per batch."""
        groups: dict[tuple[str, str], list[Item[Checked]]] = {}
        for item in items:
            groups.setdefault((item.value.dataset, item.value.contract), []).append(item)
        for (dataset, contract), group in groups.items():
            await self.publisher.publish_batch(
                self.namer.valid(dataset), [(i.record.key, i.record.value) for i in group],
                headers=[("x-loopline-contract", contract)], message_type="loopline.ingest.v1.EventIngested")
            VALIDATED.labels(dataset, "valid").inc(len(group))
