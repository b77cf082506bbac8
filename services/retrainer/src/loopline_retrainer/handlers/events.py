"""on_alert and on_training_completed: request retraining, then promote or record why not."""

from __future__ import annotations

import logging

from loopline.monitor.v1.events_pb2 import DriftAlertRaised
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.labels import decode_label
from loopline_core.outbox import OutboxEvent, Relay

from loopline_retrainer.adapters.registry import RegistryClient
from loopline_retrainer.adapters.store import RetrainerStore
from loopline_retrainer.domain.policy import decide, may_request
from loopline_retrainer.metrics import DECISIONS, REQUESTS
from loopline_retrainer.settings import Settings

log = logging.getLogger(__name__)


class RetrainerHandlers:
    def __init__(self, store: RetrainerStore, registry: RegistryClient, outbox: Relay, namer: TopicNamer,
                 settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.outbox = outbox
        self.namer = namer
        self.s = settings

    decode_alert = staticmethod(proto(DriftAlertRaised, "metadata.event_id", "model_name"))
    decode_result = staticmethod(proto(TrainingCompleted, "metadata.event_id", "model_name"))

    @staticmethod
    def decode_label(record: Record) -> str:
        """The labelled event's id, through the decoder every label consumer shares."""
        return decode_label(record).event_id

    async def on_alert(self, alert: DriftAlertRaised, _record: Record) -> None:
        """Consumes ``loopline.monitor.alerts``; records a pending retraining request.

        The request waits for ``retrainer_fresh_labels`` new labels (see :meth:`on_label`); its id
        derives from the alert id, so a redelivered alert changes nothing.
        """
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

    async def on_label(self, event_id: str, _record: Record) -> None:
        """Consumes ``loopline.labels.<dataset>``; counts labels and emits TrainingRequested on
        ``loopline.training.requests`` for each pending request whose label wait is over.

        The request is marked in flight and its event written to the outbox in one transaction
        (its id is the request id, so the trainer recognises a repeat); the outbox relay publishes it.
        """
        await self.store.count_label(event_id, self.s.retrainer_dataset)
        requested = False
        for row in await self.store.due(self.s.retrainer_dataset):
            params = {"window_rows": str(self.s.retrainer_window_rows)}
            req = TrainingRequested(metadata=metadata("retrainer", row["request_id"],
                                                      correlation_id=row["cause_event_id"]),
                                    model_name=row["model_name"], dataset=self.s.retrainer_dataset,
                                    reason=row["reason"], seed=self.s.retrainer_seed, params=params)
            event = OutboxEvent(row["request_id"], self.namer.training_requests(), req.SerializeToString(),
                                key=row["model_name"], message_type="loopline.trainer.v1.TrainingRequested")
            if await self.store.mark_in_flight(row["request_id"], event):
                requested = True
                REQUESTS.labels(row["model_name"], "requested").inc()
        if requested:
            await self.outbox.flush(self.s.outbox_flush_s)

    async def on_training_completed(self, result: TrainingCompleted, _record: Record) -> None:
        """Consumes ``loopline.training.results``; moves ``champion`` through the registry when the
        new version wins, and records the decision either way."""
        await self.store.finish(result.request_event_id, result.succeeded)
        if not result.succeeded or await self.store.decided(result.metadata.event_id):
            return
        version = int(result.version)
        champion = await self.registry.champion(result.model_name)
        if champion == version:
            d_promote, d_reason = True, "already champion"
        else:
            d = decide(dict(result.metrics), champion is not None, self.s.retrainer_min_gain)
            d_promote, d_reason = d.promote, d.reason
            alias = "champion" if d.promote else "challenger"
            await self.registry.set_alias(result.model_name, alias, version, d.reason)
        await self.store.decide(result.metadata.event_id, result.model_name, version, d_promote, d_reason)
        DECISIONS.labels(result.model_name, "promoted" if d_promote else "rejected").inc()
        log.info("promotion decision", extra={"model": result.model_name, "version": version,
                                              "promoted": d_promote, "reason": d_reason})
