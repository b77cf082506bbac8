"""The ``ModelChanged`` events the registry emits, as outbox rows.

Each id derives from the row that records the change (the version, the audit row, the version's
stage counter, the model's revision), so a retried or redelivered request that finds the change
made enqueues nothing new, and two different changes never share an id.
"""

from __future__ import annotations

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import OutboxEvent

from loopline_registry.adapters.convert import STAGES
from loopline_registry.domain.models import Action, Stage

MESSAGE_TYPE = "loopline.registry.v1.ModelChanged"


def _event(namer: TopicNamer, event_id: str, **fields: object) -> OutboxEvent:
    msg = pb.ModelChanged(metadata=metadata("registry", event_id), **fields)  # type: ignore[arg-type]
    return OutboxEvent(msg.metadata.event_id, namer.model_events(), msg.SerializeToString(), key=msg.model_name,
                       message_type=MESSAGE_TYPE)


def registered(namer: TopicNamer, model_name: str, version: int) -> OutboxEvent:
    """REGISTERED, once per version: its id derives from the (model, version) it announces."""
    return _event(namer, derived_id("registered", model_name, str(version)), kind=pb.MODEL_EVENT_KIND_REGISTERED,
                  model_name=model_name, version=version, stage=pb.STAGE_CANDIDATE)


def alias_moved(namer: TopicNamer, model_name: str, alias: str, version: int, previous: int, reason: str,
                audit_id: int, *, action: Action, actor: str, stage: Stage) -> OutboxEvent:
    """ALIAS_SET (or ALIAS_DELETED, version 0), once per audited move: its id derives from the audit row."""
    kind = pb.MODEL_EVENT_KIND_ALIAS_DELETED if action is Action.DELETE else pb.MODEL_EVENT_KIND_ALIAS_SET
    return _event(namer, derived_id("alias", model_name, alias, str(audit_id)), kind=kind, model_name=model_name,
                  version=version, alias=alias, previous_version=previous, reason=reason, stage=STAGES[stage],
                  actor=actor, action=action.value)


def approved(namer: TopicNamer, model_name: str, version: int, reason: str, audit_id: int, *,
             actor: str) -> OutboxEvent:
    """APPROVED, once per approval: the approval's champion move is its audit row."""
    return _event(namer, derived_id("approved", model_name, str(version), str(audit_id)),
                  kind=pb.MODEL_EVENT_KIND_APPROVED, model_name=model_name, version=version, reason=reason,
                  actor=actor, action=Action.APPROVE.value, stage=pb.STAGE_PRODUCTION)


def stage_changed(namer: TopicNamer, model_name: str, version: int, stage: Stage, seq: int, reason: str, *,
                  actor: str) -> OutboxEvent:
    """STAGE_CHANGED, once per stage change: its id derives from the version's stage counter."""
    return _event(namer, derived_id("stage", model_name, str(version), str(seq)),
                  kind=pb.MODEL_EVENT_KIND_STAGE_CHANGED, model_name=model_name, version=version, stage=STAGES[stage],
                  reason=reason, actor=actor)


def model_changed(namer: TopicNamer, model_name: str, revision: int, reason: str, *, actor: str,
                  deleted: bool) -> OutboxEvent:
    """MODEL_APPLIED or MODEL_DELETED, once per revision of the model's record."""
    kind = pb.MODEL_EVENT_KIND_MODEL_DELETED if deleted else pb.MODEL_EVENT_KIND_MODEL_APPLIED
    return _event(namer, derived_id("model", model_name, str(revision)), kind=kind, model_name=model_name,
                  reason=reason, actor=actor)
