"""on_raw: ``loopline.raw.<dataset>`` -> ``loopline.ingested.<dataset>`` (EventIngested)."""

from __future__ import annotations

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.events import metadata, timestamp
from loopline_core.kafka import Publisher, Record, TopicNamer

from loopline_ingest.adapters.dedupe import SeenEvents
from loopline_ingest.domain.envelope import Envelope, wrap_json
from loopline_ingest.metrics import DUPLICATES, INGESTED


class RawHandler:
    def __init__(self, seen: SeenEvents, publisher: Publisher, namer: TopicNamer, entity_field: str) -> None:
        self.seen = seen
        self.publisher = publisher
        self.namer = namer
        self.entity_field = entity_field

    def decode(self, record: Record) -> Envelope:
        dataset = record.topic.rsplit(".", 1)[-1]
        return wrap_json(dataset, record.header("x-loopline-source") or record.topic, record.value,
                         self.entity_field)

    async def on_raw(self, env: Envelope, _record: Record) -> None:
        """Consumes ``loopline.raw.<dataset>``; emits one EventIngested per new event id.

        Publish first, then mark seen: a crash in between republishes, and downstream sinks are keyed
        by the event id, so the repeat is absorbed (marking first could lose the event).
        """
        if await self.seen.seen(env.event_id):
            DUPLICATES.labels(env.dataset).inc()
            return
        msg = EventIngested(metadata=metadata("ingest", env.event_id, occurred_at=env.event_time),
                            dataset=env.dataset, source=env.source, event_time=timestamp(env.event_time),
                            ingest_time=timestamp(env.ingest_time), content_type=env.content_type,
                            payload=env.payload)
        await self.publisher.publish(self.namer.ingested(env.dataset), msg.SerializeToString(),
                                     key=env.entity_id or env.event_id,
                                     message_type="loopline.ingest.v1.EventIngested")
        await self.seen.mark(env.event_id, env.dataset)
        INGESTED.labels(env.dataset).inc()
