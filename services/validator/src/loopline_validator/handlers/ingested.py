"""on_ingested: ``loopline.ingested.<dataset>`` -> ``loopline.valid.<dataset>``, or its DLQ plus a
``ValidationFailed`` event on ``loopline.validation-failed.<dataset>``, a batch at a time."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline.validator.v1.events_pb2 import FieldViolation, ValidationFailed
from loopline_core.contracts import JSON, Contract, Contracts, Violation, rejection
from loopline_core.errors import LooplineError, invalid
from loopline_core.events import metadata
from loopline_core.kafka import Item, Publisher, Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.kafka.delivery import PartialFailure
from loopline_core.kafka.records import CONTRACT

from loopline_validator.metrics import VALIDATED

_envelope = proto(EventIngested, "metadata.event_id")
_CONTRACT_VERSION: int = EventIngested.DESCRIPTOR.fields_by_name["contract_version"].number


@dataclass(frozen=True, slots=True)
class Checked:
    """A record that met one of its dataset's accepted contracts: the envelope to forward."""

    dataset: str
    contract: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record no accepted contract took: what the ValidationFailed event says, and the error the
    dead letter carries."""

    dataset: str
    event_id: str
    contract: str
    version: str
    violations: list[Violation]
    error: LooplineError


class IngestedHandler:
    def __init__(self, publisher: Publisher, namer: TopicNamer, contracts: Contracts,
                 clock: Callable[[], float] = time.time) -> None:
        self.publisher = publisher
        self.namer = namer
        self.contracts = contracts
        self.clock = clock
        self._accepted: dict[str, tuple[float, list[Contract]]] = {}
        """dataset -> (until when, the majors accepted until then): looked up once per window, not per record."""

    def accepted(self, dataset: str) -> list[Contract]:
        """The dataset's majors accepted now, newest first (NOT_FOUND for a dataset without a contract)."""
        now = self.clock()
        cached = self._accepted.get(dataset)
        if cached is not None and now < cached[0]:
            return cached[1]
        majors = self.contracts.accepted(dataset, datetime.fromtimestamp(now, UTC))
        until = min((c.accept_until.timestamp() for c in majors if c.accept_until is not None), default=math.inf)
        self._accepted[dataset] = (until, majors)
        return majors

    def decode(self, record: Record) -> Checked | Rejected:
        """Parse the envelope and check its payload against the dataset's accepted majors, newest first.

        The first major the record meets stamps it (``contract_version``); a record none takes is
        :class:`Rejected` with the newest major's violations. An envelope that does not parse, or
        names a dataset without a contract, raises INVALID_ARGUMENT (dead letters only: there is no
        event to describe).
        """
        msg = _envelope(record)
        try:
            majors = self.accepted(msg.dataset)
        except LooplineError as exc:
            raise invalid(exc.message) from exc
        if not majors:
            raise invalid(f"no contract of {msg.dataset[:64]!r} is accepted any more")
        first: Rejected | None = None
        for contract in majors:
            try:
                payload = contract.decode(msg.content_type, msg.payload)
            except LooplineError as exc:
                first = first or _rejected(msg, contract, [Violation("", exc.details.get("rule", "decode"),
                                                                     exc.message)], exc)
                continue
            conformed, problems = contract.judge(payload)
            if conformed is not None:
                if conformed is payload:  # the bytes as received with the field appended (the last one wins)
                    return Checked(msg.dataset, contract.ref, record.value + _stamp(contract.version))
                return Checked(msg.dataset, contract.ref, _rewritten(msg, contract, conformed))
            if first is None:
                first = _rejected(msg, contract, problems, rejection(contract, problems))
        VALIDATED.labels(msg.dataset, "rejected").inc()
        assert first is not None
        return first

    async def on_ingested(self, items: list[Item[Checked | Rejected]]) -> None:
        """Consumes ``loopline.ingested.<dataset>``. Valid records go on to ``loopline.valid.<dataset>``
        (same key, stamped with the contract version they met, header ``x-loopline-contract``), in one
        flush. A rejected record gets its ``ValidationFailed`` event, then is handed back to the
        delivery layer (``PartialFailure``), which dead-letters it with the reason, contract, field and
        rule and calls again with the records after it. The event is published before the dead letter
        and the commit, so a crash in between repeats it (same event id) rather than losing it."""
        cut = next((n for n, i in enumerate(items) if isinstance(i.value, Rejected)), len(items))
        groups: dict[tuple[str, str], list[tuple[bytes | None, bytes]]] = {}
        for item in items[:cut]:
            value = item.value
            assert isinstance(value, Checked)
            groups.setdefault((value.dataset, value.contract), []).append((item.record.key, value.envelope))
        for (dataset, contract), records in groups.items():
            await self.publisher.publish_batch(self.namer.valid(dataset), records, headers=[(CONTRACT, contract)],
                                               message_type="loopline.ingest.v1.EventIngested")
            VALIDATED.labels(dataset, "valid").inc(len(records))
        if cut == len(items):
            return
        bad = items[cut]
        failed = bad.value
        assert isinstance(failed, Rejected)
        event = ValidationFailed(metadata=metadata("validator", failed.event_id), dataset=failed.dataset,
                                 contract_version=failed.version,
                                 violations=[FieldViolation(field=v.field, rule=v.rule, message=v.message)
                                             for v in failed.violations])
        await self.publisher.publish(self.namer.validation_failed(failed.dataset), event.SerializeToString(),
                                     key=bad.record.key, message_type="loopline.validator.v1.ValidationFailed")
        raise PartialFailure(cut, failed.error)


def _rejected(msg: EventIngested, contract: Contract, problems: list[Violation], error: LooplineError) -> Rejected:
    return Rejected(msg.dataset, msg.metadata.event_id, contract.ref, contract.version, problems, error)


@cache
def _stamp(version: str) -> bytes:
    """``contract_version`` encoded as a field, to append to an envelope as received (no re-encoding)."""
    value = version.encode()
    if len(value) > 127:  # a one-byte length: a version is a few characters
        return EventIngested(contract_version=version).SerializeToString()
    return bytes([(_CONTRACT_VERSION << 3) | 2, len(value)]) + value


def _rewritten(msg: EventIngested, contract: Contract, record: dict[str, object]) -> bytes:
    """The envelope with the payload as forwarded (unknown fields dropped) and the contract version."""
    msg.payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    msg.content_type = JSON
    msg.contract_version = contract.version
    return msg.SerializeToString()
