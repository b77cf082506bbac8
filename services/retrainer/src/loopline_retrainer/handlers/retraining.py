"""The retraining policy at work: alerts, label volume and the schedule become decisions, and due
requests become ``TrainingRequested`` events.

Every decision (requested, waiting, skipped and why) is a row of ``retrain_decisions`` and a
``RetrainDecided`` event on the model events topic, written through the outbox in one transaction.
An alert's request waits for ``window.min_rows`` labels after the alert; it then asks for a run on
data from the alert's onset on (``window_start``) when the policy says ``from_onset``, with the
champion's version as ``warm_start_version`` when its mode is ``warm_start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import asyncpg
from loopline.monitor.v1.events_pb2 import AlertRaised, DriftAlertRaised
from loopline.retrainer.v1.events_pb2 import RetrainDecided
from loopline.trainer.v1.events_pb2 import TrainingRequested
from loopline_core.errors import LooplineError
from loopline_core.events import derived_id, metadata, timestamp
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import OutboxEvent, Relay
from loopline_core.registry import RegistryClient
from loopline_ml import spec as specs
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext

from loopline_retrainer.adapters.store import Decided, ModelTx, NewRequest, RetrainerStore
from loopline_retrainer.domain.policy import Alert, Outcome, Plan, plan_alert, plan_label_volume, plan_schedule
from loopline_retrainer.metrics import REQUESTS, RETRAIN_DECISIONS
from loopline_retrainer.settings import Settings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("loopline.retrainer")
DECIDED_TYPE = RetrainDecided.DESCRIPTOR.full_name
REQUESTED_TYPE = TrainingRequested.DESCRIPTOR.full_name


def alert_of(msg: AlertRaised | DriftAlertRaised) -> Alert:
    """The policy's view of an alert; a legacy DriftAlertRaised is a feature-drift warning of its own episode."""
    if isinstance(msg, AlertRaised):
        onset = msg.onset.ToNanoseconds() / 1e9 if msg.HasField("onset") else 0.0
        return Alert(msg.metadata.event_id, msg.model_name, msg.model_version, msg.kind, msg.severity,
                     msg.episode_id or msg.metadata.event_id, int(msg.repeat or 1), onset, msg.window, msg.metric,
                     msg.value, msg.threshold, msg.report_uri, msg.summary)
    worst = max(msg.feature_scores.items(), key=lambda kv: kv[1], default=("?", 0.0))
    return Alert(msg.metadata.event_id, msg.model_name, msg.model_version, "feature_drift", "warning",
                 msg.metadata.event_id, 1, 0.0, f"count:{msg.window_size}", msg.statistic, msg.max_score,
                 msg.threshold, "", f"{msg.statistic} {worst[0]}={worst[1]:.2f} > {msg.threshold}")


class Policies:
    """Each model's ``retraining:`` section, re-read when its spec file changes (no restart for an edit)."""

    def __init__(self, models_dir: Path) -> None:
        self.dir = models_dir
        self._cache: dict[str, tuple[int, specs.Retraining | None, str]] = {}

    def get(self, model: str) -> tuple[specs.Retraining | None, str]:
        """(the policy, "") or (None, why there is none)."""
        path = self.dir / f"{model}.yaml"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None, f"model {model!r} has no spec ({path} does not exist)"
        cached = self._cache.get(model)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, specs.load(self.dir, model).retraining, "")
            except LooplineError as exc:
                cached = (stamp, None, exc.message)
            self._cache[model] = cached
        return cached[1], cached[2]


class RetrainingPolicy:
    def __init__(self, store: RetrainerStore, registry: RegistryClient, outbox: Relay, namer: TopicNamer,
                 settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.outbox = outbox
        self.namer = namer
        self.s = settings
        self.policies = Policies(Path(settings.models_dir))
        self._origins: dict[str, SpanContext] = {}
        """The span that planned each pending request (an alert's, a label's): in memory only, so after a
        restart a request still goes out, its span just has no link."""

    @property
    def dataset(self) -> str:
        return self.s.retrainer_dataset

    async def on_alert(self, alert: Alert) -> None:
        """Decide about one alert (once: a redelivered alert finds its decision and changes nothing)."""
        if await self.store.handled(alert.event_id):
            return
        policy, missing = self.policies.get(alert.model)
        async with self.store.model_tx(alert.model, self.dataset) as tx:
            plan = plan_alert(policy, alert, await tx.busy(),
                              episode_requested=await tx.episode_requested(alert.episode_id))
            if policy is None:
                plan = Plan(plan.outcome, missing, plan.trigger, plan.mode, plan.code)
            recorded = await self._apply(tx, plan, alert.event_id, alert.evidence(), alert.episode_id)
        if not await self.emit_due() and recorded:
            await self.outbox.flush(self.s.outbox_flush_s)

    async def on_label(self) -> None:
        """After a new label: the label-volume triggers, then every request whose wait is over."""
        recorded = False
        for model in self.s.retrainer_models:
            policy, _ = self.policies.get(model)
            if policy is None or not any(t.kind == "label_volume" for t in policy.triggers):
                continue
            async with self.store.model_tx(model, self.dataset) as tx:
                base = await tx.labels_at_last_request()
                plan = plan_label_volume(policy, await tx.labels() - base, await tx.busy())
                if plan is not None:
                    cause = derived_id("label_volume", model, str(base), plan.code)
                    recorded |= await self._apply(tx, plan, cause,
                                                  {"labels_since_last_run": await tx.labels() - base}, "")
        if not await self.emit_due() and recorded:
            await self.outbox.flush(self.s.outbox_flush_s)

    async def check_schedules(self) -> None:
        recorded = False
        for model in self.s.retrainer_models:
            policy, _ = self.policies.get(model)
            if policy is None or not any(t.kind == "schedule" for t in policy.triggers):
                continue
            async with self.store.model_tx(model, self.dataset) as tx:
                last = await tx.last_request_at()
                plan = plan_schedule(policy, time.time() - last, await tx.busy())
                if plan is not None:
                    cause = derived_id("schedule", model, f"{last:.3f}", plan.code)
                    recorded |= await self._apply(tx, plan, cause, {"since_last_run_s": round(time.time() - last, 1)},
                                                  "")
        if not await self.emit_due() and recorded:
            await self.outbox.flush(self.s.outbox_flush_s)

    async def run_schedules(self, stop: asyncio.Event) -> None:
        """Check the schedule triggers every ``retrainer_schedule_check_s`` until ``stop``."""
        while not stop.is_set():
            try:
                await self.check_schedules()
            except (LooplineError, OSError, asyncpg.PostgresError) as exc:  # next tick tries again
                log.warning("schedule check failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.retrainer_schedule_check_s)

    async def _apply(self, tx: ModelTx, plan: Plan, cause: str, evidence: dict[str, object], episode: str) -> bool:
        """Record a decision; a request to be made becomes a pending request (due at once, or after labels).
        True when a decision event went to the outbox."""
        model = tx.model
        evidence_json = json.dumps(evidence, sort_keys=True)
        request_id = derived_id("retrain", cause) if plan.outcome is not Outcome.SKIPPED else ""
        if request_id:
            await tx.add_request(NewRequest(request_id, model, cause, plan.reason, plan.trigger, evidence_json, episode,
                                            plan.mode, plan.window_start, plan.max_rows, plan.min_rows))
            # the request may go out later (after a label wait, from a label's batch): its span links the cause
            self._origins[request_id] = trace.get_current_span().get_span_context()
        if plan.outcome is not Outcome.REQUESTED:  # "requested" is recorded when the request is sent
            d = Decided(derived_id("retrain-decided", cause, plan.outcome.value), model, plan.outcome.value,
                        plan.code, plan.reason, plan.trigger, evidence_json, cause, request_id, plan.mode,
                        plan.window_start)
            if await tx.record(d, self._event(d)):
                self._count(d)
                log.info("retraining decision", extra={"model": model, "decision": d.decision, "reason": d.reason,
                                                       "trigger": d.trigger})
                return True
        return False

    async def emit_due(self) -> bool:
        """Send every request whose label wait is over: the TrainingRequested and the "requested" decision
        go to the outbox with the move to in-flight, in one transaction. True when one was sent."""
        sent = False
        for row in await self.store.due(self.dataset):
            model, mode = row["model_name"], row["mode"]
            warm, reason = 0, row["reason"]
            if mode == "warm_start":
                held = await self.registry.champion(model)
                warm = held.version if held is not None else 0
                reason += f"; warm start from champion v{warm}" if warm else "; no champion: full retrain"
            window_start = float(row["window_start_s"])
            req = TrainingRequested(
                metadata=metadata("retrainer", row["request_id"], correlation_id=row["cause_event_id"]),
                model_name=model, dataset=self.dataset, reason=reason, seed=self.s.retrainer_seed, has_seed=True,
                params={"window_rows": str(row["max_rows"])}, trigger=row["trigger"], evidence=row["evidence"],
                warm_start_version=warm)
            if window_start:
                req.window_start.CopyFrom(timestamp(window_start))
            origin = self._origins.pop(row["request_id"], None)
            with _tracer.start_as_current_span("retrain requested", links=[Link(origin)] if origin else [],
                                               attributes={"loopline.model": model,
                                                           "loopline.trigger": row["trigger"]}):
                event = OutboxEvent(row["request_id"], self.namer.training_requests(), req.SerializeToString(),
                                    key=model, message_type=REQUESTED_TYPE)
                d = Decided(derived_id("retrain-decided", row["cause_event_id"], "requested"), model, "requested",
                            "", reason, row["trigger"], row["evidence"], row["cause_event_id"], row["request_id"],
                            "warm_start" if warm else "full", window_start)
                marked = await self.store.mark_in_flight(row["request_id"], event, d, self._event(d))
            if marked:
                sent = True
                self._count(d)
                log.info("retraining requested", extra={"model": model, "request_id": row["request_id"],
                                                        "trigger": d.trigger, "reason": reason})
        if sent:
            await self.outbox.flush(self.s.outbox_flush_s)
        return sent

    def _event(self, d: Decided) -> OutboxEvent:
        msg = RetrainDecided(metadata=metadata("retrainer", d.decision_id, correlation_id=d.cause_event_id),
                             model_name=d.model, decision=d.decision, reason=d.reason, trigger=d.trigger,
                             evidence=d.evidence, cause_event_id=d.cause_event_id, request_id=d.request_id,
                             mode=d.mode)
        if d.window_start:
            msg.window_start.CopyFrom(timestamp(d.window_start))
        return OutboxEvent(d.decision_id, self.namer.model_events(), msg.SerializeToString(), key=d.model,
                           message_type=DECIDED_TYPE)

    @staticmethod
    def _count(d: Decided) -> None:
        REQUESTS.labels(d.model, d.decision).inc()
        RETRAIN_DECISIONS.labels(d.model, d.decision, d.trigger, d.code or d.decision).inc()
