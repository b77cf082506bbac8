"""on_alert and on_training_completed: request retraining, then promote or record why not."""

from __future__ import annotations

import json
import logging

from loopline.monitor.v1.events_pb2 import DriftAlertRaised
from loopline.registry.v1 import registry_pb2 as pb
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_core.labels import Label, decode_label
from loopline_core.outbox import OutboxEvent, Relay
from loopline_core.registry import RegistryClient

from loopline_retrainer.adapters.store import RetrainerStore
from loopline_retrainer.domain.policy import Action, Candidate, Decision, decide, may_request
from loopline_retrainer.handlers.rollouts import RolloutController
from loopline_retrainer.metrics import DECISIONS, REQUESTS
from loopline_retrainer.settings import Settings

log = logging.getLogger(__name__)


class RetrainerHandlers:
    def __init__(self, store: RetrainerStore, registry: RegistryClient, outbox: Relay, namer: TopicNamer,
                 settings: Settings, rollouts: RolloutController) -> None:
        self.rollouts = rollouts
        self.store = store
        self.registry = registry
        self.outbox = outbox
        self.namer = namer
        self.s = settings

    _drift = staticmethod(proto(DriftAlertRaised, "metadata.event_id", "model_name"))
    decode_result = staticmethod(proto(TrainingCompleted, "metadata.event_id", "model_name"))

    @classmethod
    def decode_alert(cls, record: Record) -> DriftAlertRaised | None:
        """Drift alerts only: the alerts topic also carries other kinds (an ArtifactRefused, say), which
        would parse as a bogus drift alert since protobuf does not know its own type on the wire."""
        kind = record.header(MESSAGE_TYPE)
        if kind is not None and kind != DriftAlertRaised.DESCRIPTOR.full_name:
            return None
        alert: DriftAlertRaised = cls._drift(record)
        return alert

    @staticmethod
    def decode_label(record: Record) -> Label:
        """The label, through the decoder every label consumer shares."""
        return decode_label(record)

    async def on_alert(self, alert: DriftAlertRaised | None, _record: Record) -> None:
        """Consumes ``loopline.monitor.alerts``; records a pending retraining request for a drift alert
        (other alert kinds are not its business).

        The request waits for ``retrainer_fresh_labels`` new labels (see :meth:`on_label`); its id
        derives from the alert id, so a redelivered alert changes nothing.
        """
        if alert is None:
            return
        cause = alert.metadata.event_id
        if await self.store.request_for(cause) is not None:
            return
        in_flight, since_done = await self.store.ages(alert.model_name)
        ok, why = may_request(in_flight, since_done, in_flight_timeout_s=self.s.retrainer_in_flight_timeout_s,
                              cooldown_s=self.s.retrainer_cooldown_s)
        if not ok:
            await self.store.skip(cause, alert.model_name, why)
            REQUESTS.labels(alert.model_name, "skipped").inc()
            log.info("not retraining", extra={"model": alert.model_name, "reason": why})
            return
        worst = max(alert.feature_scores.items(), key=lambda kv: kv[1], default=("?", 0.0))
        reason = f"drift: {alert.statistic} {worst[0]}={worst[1]:.2f} > {alert.threshold} on v{alert.model_version}"
        await self.store.add_request(derived_id("retrain", cause), alert.model_name, cause, reason,
                                     self.s.retrainer_dataset, self.s.retrainer_fresh_labels)
        REQUESTS.labels(alert.model_name, "pending").inc()
        log.info("retraining once fresh labels arrive", extra={"model": alert.model_name, "reason": reason})

    async def on_label(self, label: Label, _record: Record) -> None:
        """Consumes ``loopline.labels.<dataset>``; counts labels and emits TrainingRequested on
        ``loopline.training.requests`` for each pending request whose label wait is over; while a
        rollout runs, the label also goes to the prediction rows it labels (see :mod:`.rollouts`).

        The request is marked in flight and its event written to the outbox in one transaction
        (its id is the request id, so the trainer recognises a repeat); the outbox relay publishes it.
        """
        await self.rollouts.on_label(label.event_id, label.value)
        await self.store.count_label(label.event_id, self.s.retrainer_dataset)
        requested = False
        for row in await self.store.due(self.s.retrainer_dataset):
            params = {"window_rows": str(self.s.retrainer_window_rows)}
            req = TrainingRequested(metadata=metadata("retrainer", row["request_id"],
                                                      correlation_id=row["cause_event_id"]),
                                    model_name=row["model_name"], dataset=self.s.retrainer_dataset,
                                    reason=row["reason"], seed=self.s.retrainer_seed, has_seed=True,
                                    params=params)
            event = OutboxEvent(row["request_id"], self.namer.training_requests(), req.SerializeToString(),
                                key=row["model_name"], message_type="loopline.trainer.v1.TrainingRequested")
            if await self.store.mark_in_flight(row["request_id"], event):
                requested = True
                REQUESTS.labels(row["model_name"], "requested").inc()
        if requested:
            await self.outbox.flush(self.s.outbox_flush_s)

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
