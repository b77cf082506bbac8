"""on_model_changed: ``loopline.models.events`` -> reload the champion when its alias moves."""

from __future__ import annotations

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.kafka import Record
from loopline_core.kafka.codec import proto

from loopline_inference.adapters.repository import Repository


class ModelEventsHandler:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    decode = staticmethod(proto(pb.ModelChanged, "model_name"))

    async def on_model_changed(self, event: pb.ModelChanged, _record: Record) -> None:
        """Consumes ``loopline.models.events`` (every replica sees every event); emits nothing."""
        if event.model_name in self.repo.names and event.kind == pb.MODEL_EVENT_KIND_ALIAS_SET \
                and event.alias == "champion":
            await self.repo.reconcile(event.model_name)
