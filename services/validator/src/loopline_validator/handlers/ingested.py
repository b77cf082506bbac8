"""on_ingested: ``loopline.ingested.<dataset>`` -> ``loopline.valid.<dataset>`` or its DLQ."""

from __future__ import annotations

import json

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.errors import invalid
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.codec import proto

from loopline_validator.domain.contracts import CONTRACTS
from loopline_validator.metrics import VALIDATED


class IngestedHandler:
    def __init__(self, publisher: Publisher, namer: TopicNamer) -> None:
        self.publisher = publisher
        self.namer = namer

    decode = staticmethod(proto(EventIngested, "metadata.event_id"))

    async def on_ingested(self, msg: EventIngested, record: Record) -> None:
        """Consumes ``loopline.ingested.<dataset>``; valid records go on to ``loopline.valid.<dataset>``.

        A record that breaks its contract raises INVALID_ARGUMENT: the bus sends it to
        ``loopline.dlq.<dataset>`` with the reason, the contract version and the field in headers.
        """
        contract = CONTRACTS.get(msg.dataset)
        if contract is None:
            raise invalid(f"no contract for dataset {msg.dataset!r}")
        try:
            payload = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid(f"payload is not JSON: {exc}", contract=contract.ref) from exc
        try:
            contract.check(payload)
        except Exception:
            VALIDATED.labels(msg.dataset, "rejected").inc()
            raise
        await self.publisher.publish(self.namer.valid(msg.dataset), record.value, key=record.key,
                                     headers=[("x-loopline-contract", contract.ref.encode())],
                                     message_type="loopline.ingest.v1.EventIngested")
        VALIDATED.labels(msg.dataset, "valid").inc()
