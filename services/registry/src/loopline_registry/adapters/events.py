"""The ``ModelChanged`` events the registry emits, as outbox rows (ids derived from the change)."""

from __future__ import annotations

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import OutboxEvent

MESSAGE_TYPE = "loopline.registry.v1.ModelChanged"


def _event(namer: TopicNamer, msg: pb.ModelChanged) -> OutboxEvent:
    return OutboxEvent(msg.metadata.event_id, namer.model_events(), msg.SerializeToString(), key=msg.model_name,
                       message_type=MESSAGE_TYPE)


def registered(namer: TopicNamer, model_name: str, version: int) -> OutboxEvent:
    """REGISTERED, once per version: its id derives from the (model, version) it announces."""
    return _event(namer, pb.ModelChanged(metadata=metadata("registry", derived_id("registered", model_name,
                                                                                  str(version))),
                                         kind=pb.MODEL_EVENT_KIND_REGISTERED, model_name=model_name, version=version))


def alias_set(namer: TopicNamer, model_name: str, alias: str, version: int, previous: int, reason: str,
              audit_id: int) -> OutboxEvent:
    """ALIAS_SET, once per audited move: its id derives from the audit row that records the move."""
    return _event(namer, pb.ModelChanged(
        metadata=metadata("registry", derived_id("alias", model_name, alias, str(audit_id))),
        kind=pb.MODEL_EVENT_KIND_ALIAS_SET, model_name=model_name, version=version, alias=alias,
        previous_version=previous, reason=reason))
