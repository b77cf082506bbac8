"""The retrainer's consumers: alerts and labels (to the retraining policy), training results (promote,
roll out, stage or record why not)."""

from __future__ import annotations

import json
import logging

from loopline.monitor.v1.events_pb2 import AlertRaised, DriftAlertRaised
from loopline.registry.v1 import registry_pb2 as pb
from loopline.trainer.v1.events_pb2 import TrainingCompleted
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_core.labels import Label, decode_label
from loopline_core.outbox import Relay
from loopline_core.registry import RegistryClient

from loopline_retrainer.adapters.store import RetrainerStore
from loopline_retrainer.domain.policy import Action, Alert, Candidate, Decision, decide
from loopline_retrainer.handlers.retraining import RetrainingPolicy, alert_of
from loopline_retrainer.handlers.rollouts import RolloutController
from loopline_retrainer.metrics import DECISIONS
from loopline_retrainer.settings import Settings

log = logging.getLogger(__name__)


class RetrainerHandlers:
    def __init__(self, store: RetrainerStore, registry: RegistryClient, outbox: Relay, namer: TopicNamer,
                 settings: Settings, rollouts: RolloutController, retraining: RetrainingPolicy) -> None:
        self.rollouts = rollouts
        self.retraining = retraining
        self.store = store
        self.registry = registry
        self.outbox = outbox
        self.namer = namer
        self.s = settings

    _raised = staticmethod(proto(AlertRaised, "metadata.event_id", "model_name"))
    _drift = staticmethod(proto(DriftAlertRaised, "metadata.event_id", "model_name"))
    decode_result = staticmethod(proto(TrainingCompleted, "metadata.event_id", "model_name"))

    @classmethod
    def decode_alert(cls, record: Record) -> Alert | None:
        """An AlertRaised, or a DriftAlertRaised from an older producer (a record without a type header is
        one); the topic's other kinds (AlertResolved, ArtifactRefused) are skipped by their type header,
        since protobuf does not know its own type on the wire and they would parse as a bogus alert."""
        kind = record.header(MESSAGE_TYPE)
        if kind == AlertRaised.DESCRIPTOR.full_name:
            return alert_of(cls._raised(record))
        if kind is None or kind == DriftAlertRaised.DESCRIPTOR.full_name:
            return alert_of(cls._drift(record))
        return None

    @staticmethod
    def decode_label(record: Record) -> Label:
        """The label, through the decoder every label consumer shares."""
        return decode_label(record)

    async def on_alert(self, alert: Alert | None, _record: Record) -> None:
        """Consumes ``loopline.monitor.alerts``; the model's retraining policy decides (see
        :mod:`.retraining`): skipped and why, or a request that waits for labels since the alert."""
        if alert is not None:
            await self.retraining.on_alert(alert)

    async def on_label(self, label: Label, _record: Record) -> None:
        """Consumes ``loopline.labels.<dataset>``; counts labels (once each), then checks the label-volume
        triggers and sends every request whose label wait is over as ``TrainingRequested`` on
        ``loopline.training.requests`` (through the outbox, with its "requested" decision); while a
        rollout runs, the label also goes to the prediction rows it labels (see :mod:`.rollouts`)."""
        await self.rollouts.on_label(label.event_id, label.value)
        await self.store.count_label(label.event_id, self.s.retrainer_dataset)
        await self.retraining.on_label()

    async def on_training_completed(self, result: TrainingCompleted, _record: Record) -> None:
        """Consumes ``loopline.training.results``; promotes the new version through the registry when
        the registry's record of it allows (its stored gate passed against the current champion), stages
        it when the model needs a human approval, and records the decision either way.

        The champion moves by compare-and-set on the holder read here: if someone (an SRE's rollback,
        another retrainer) moved it in between, the registry answers ABORTED and the decision is made
        again against the new holder, so an SRE's move is never silently undone.
        """
        await self.store.finish(result.request_event_id, result.succeeded)
        if not result.succeeded or await self.store.decided(result.metadata.event_id):
            return
        name, number = result.model_name, int(result.version)
        for _ in range(3):
            d, champion, model = await self._decide(name, number)
            try:
                await self._apply(model, number, d, champion, result)
                break
            except LooplineError as exc:
                if exc.kind is not ErrorKind.ABORTED:
                    raise
                log.info("champion moved meanwhile; deciding again", extra={"model": name, "error": exc.message})
        else:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"{name}: the champion keeps moving; retrying later")
        await self.store.decide(result.metadata.event_id, name, number, d.promote, d.reason)
        DECISIONS.labels(name, d.action.value).inc()
        log.info("promotion decision", extra={"model": name, "version": number, "action": d.action.value,
                                              "reason": d.reason})

    async def _decide(self, name: str, number: int) -> tuple[Decision, int, pb.Model]:
        """The decision, the champion it was made against (0: none) and the model's record."""
        v = await self.registry.get(name, number)
        model = await self.registry.model(name)
        held = await self.registry.champion(name)
        champion = held.version if held is not None else 0
        return decide(Candidate(number, v.stage == pb.STAGE_RETIRED, v.gate.passed, v.gate.summary,
                                v.gate.champion_version, model.requires_approval, model.rollout.mode),
                      champion or None), champion, model

    async def _apply(self, model: pb.Model, number: int, d: Decision, champion: int,
                     result: TrainingCompleted) -> None:
        name = model.name
        evidence = json.dumps({"decision": d.action.value, "reason": d.reason, "request": result.request_event_id,
                               "training_result": result.metadata.event_id})
        if d.action is Action.PROMOTE:
            await self.registry.set_alias(name, "champion", number, actor="retrainer", reason=d.reason,
                                          expected=champion, evidence=evidence)
        elif d.action is Action.ROLLOUT:
            await self.rollouts.start(model, number, champion, d.reason)
        elif d.action is Action.STAGE:
            await self.registry.set_stage(name, number, "staging", actor="retrainer", reason=d.reason)
