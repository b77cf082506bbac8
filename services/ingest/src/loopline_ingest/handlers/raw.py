"""on_raw: ``loopline.raw.<dataset>`` -> ``loopline.ingested.<dataset>`` (EventIngested), a batch at a time."""

from __future__ import annotations

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.contracts import Contracts
from loopline_core.errors import LooplineError, invalid
from loopline_core.events import timestamp
from loopline_core.kafka import Item, Publisher, Record, TopicNamer
from loopline_core.kafka.records import CONTENT_TYPE, EVENT_ID, REDRIVEN_FROM, REPLAY, SOURCE, TS_UNIT

from loopline_ingest.adapters.dedupe import SeenEvents
from loopline_ingest.domain.envelope import Envelope, wrap
from loopline_ingest.metrics import DUPLICATES, INGESTED


class RawHandler:
    def __init__(self, seen: SeenEvents, publisher: Publisher, namer: TopicNamer, contracts: Contracts) -> None:
        self.seen = seen
        self.publisher = publisher
        self.namer = namer
        self.contracts = contracts

    def decode(self, record: Record) -> Envelope:
        """Envelope one raw record with its dataset's current contract (field names, event-time unit,
        payload cap, JSON or protobuf by the ``content-type`` header); anything wrong with it raises
        and sends it to the dead letters."""
        dataset = record.topic.rsplit(".", 1)[-1]
        try:
            contract = self.contracts.current(dataset)
        except LooplineError as exc:
            raise invalid(exc.message) from exc
        return wrap(contract, record.header(SOURCE) or record.topic, record.value,
                    content_type=record.header(CONTENT_TYPE), event_id=record.header(EVENT_ID),
                    ts_unit=record.header(TS_UNIT), redriven=record.header(REDRIVEN_FROM) is not None,
                    replay=record.header(REPLAY))

    async def on_raw(self, items: list[Item[Envelope]]) -> None:
        """Consumes ``loopline.raw.<dataset>``; emits one EventIngested per new event id.

        One query finds the ids already forwarded, one flush publishes the rest (keyed by entity, so
        one customer's events stay in order), one statement marks them seen. Publish first, then
        mark: a crash in between republishes, and every sink downstream is keyed by the event id,
        so the repeat is absorbed (marking first could lose the event).
        """
        batch: dict[str, Envelope] = {}
        for item in items:
            env = item.value
            kept = batch.setdefault(env.event_id, env)
            if (env.redriven or env.replay) and not (kept.redriven or kept.replay):
                batch[env.event_id] = env  # a forced copy beside a plain duplicate: the forced one must go out
        # A redriven record failed after ingest had forwarded (and marked) it, and a replayed one is
        # republished from the raw archive on purpose, so they go out again; they keep their event id,
        # so sinks that already hold them do not take them twice.
        seen = await self.seen.seen([eid for eid, env in batch.items() if not (env.redriven or env.replay)])
        new = [env for eid, env in batch.items() if eid not in seen]
        groups: dict[tuple[str, str | None], list[Envelope]] = {}
        for env in new:
            groups.setdefault((env.dataset, env.replay), []).append(env)
        for (dataset, replay), envs in groups.items():
            await self.publisher.publish_batch(
                self.namer.ingested(dataset), [(env.entity_id or env.event_id, _envelope(env)) for env in envs],
                headers=[(REPLAY, replay)] if replay is not None else (),
                message_type="loopline.ingest.v1.EventIngested")
        await self.seen.mark([(env.event_id, env.dataset) for env in new])
        for (dataset, _), envs in groups.items():
            INGESTED.labels(dataset).inc(len(envs))
        if len(new) < len(items):
            DUPLICATES.labels(items[0].value.dataset).inc(len(items) - len(new))


def _envelope(env: Envelope) -> bytes:
    # Fields are set in place: building the nested messages first and passing them in copies each.
    msg = EventIngested(dataset=env.dataset, source=env.source, content_type=env.content_type, payload=env.payload)
    msg.metadata.event_id = env.event_id
    msg.metadata.producer = "ingest"
    msg.metadata.occurred_at.CopyFrom(timestamp(env.event_time))
    msg.event_time.CopyFrom(msg.metadata.occurred_at)
    msg.ingest_time.CopyFrom(timestamp(env.ingest_time))
    return msg.SerializeToString()
