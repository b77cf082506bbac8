"""on_model_changed: ``loopline.models.events`` -> reload the champion when its alias moves."""

from __future__ import annotations

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.kafka import Record
from loopline_core.kafka.codec import proto
from loopline_core.kafka.records import MESSAGE_TYPE

from loopline_inference.adapters.repository import Repository


class ModelEventsHandler:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    _parse = staticmethod(proto(pb.ModelChanged, "model_name"))

    @classmethod
    def decode(cls, record: Record) -> pb.ModelChanged | None:
        """ModelChanged only: the topic also carries other kinds (the retrainer's RolloutDecided), which
        would not parse as one, or worse, would; their type header says so, and they are skipped."""
        kind = record.header(MESSAGE_TYPE)
        if kind is not None and kind != pb.ModelChanged.DESCRIPTOR.full_name:
            return None
        event: pb.ModelChanged = cls._parse(record)
        return event

    async def on_model_changed(self, event: pb.ModelChanged | None, _record: Record) -> None:
        """Consumes ``loopline.models.events`` (every replica sees every event); emits nothing."""
        # any change to a served model: an alias moved or was removed (champion, challenger), its
        # rollout or variant policy changed, a version was retired
        if event is not None and event.model_name in self.repo.names:
            await self.repo.reconcile(event.model_name)
