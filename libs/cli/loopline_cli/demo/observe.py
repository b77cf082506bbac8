"""Watches the platform's own topics (model events, alerts, training results, dead letters) for the
demo's live view and timeline. It only reads: nothing it does changes the loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from loopline.monitor.v1.events_pb2 import (
    AlertRaised,
    AlertResolved,
    ArtifactRefused,
    DriftAlertRaised,
    WindowEvaluated,
)
from loopline.registry.v1 import registry_pb2
from loopline.retrainer.v1.events_pb2 import RetrainDecided, RolloutDecided
from loopline.trainer.v1.events_pb2 import TrainingCompleted
from loopline_core.kafka import TopicNamer
from loopline_core.kafka.records import DLQ_REASON, MESSAGE_TYPE

ROLLOUT_TYPE = RolloutDecided.DESCRIPTOR.full_name.encode()
RETRAIN_TYPE = RetrainDecided.DESCRIPTOR.full_name.encode()


@dataclass
class Moment:
    at: float
    kind: str
    text: str
    version: int = 0


@dataclass
class Observed:
    timeline: list[Moment] = field(default_factory=list)
    champion: int = 0
    versions: list[int] = field(default_factory=list)
    alerts: int = 0
    dead_letters: int = 0
    dlq_reasons: list[str] = field(default_factory=list)
    trainings: list[TrainingCompleted] = field(default_factory=list)
    rollouts: list[RolloutDecided] = field(default_factory=list)
    raised: list[AlertRaised] = field(default_factory=list)
    evaluations: list[WindowEvaluated] = field(default_factory=list)
    retrains: list[RetrainDecided] = field(default_factory=list)


class Observer:
    def __init__(self, bootstrap: str, namer: TopicNamer) -> None:
        self.namer = namer
        self.seen = Observed()
        self._consumer = AIOKafkaConsumer(
            namer.model_events(), namer.alerts(), namer.training_results(), namer.dlq("transactions"),
            namer.evaluations(),
            bootstrap_servers=bootstrap, group_id=f"demo-observer-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest", enable_auto_commit=False)
        self._stop = asyncio.Event()

    def note(self, kind: str, text: str, version: int = 0) -> None:
        self.seen.timeline.append(Moment(time.time(), kind, text, version))

    async def run(self) -> None:
        await self._consumer.start()
        try:
            while not self._stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for r in records:
                        self._handle(r.topic, r.value, dict(r.headers or ()))
        finally:
            await self._consumer.stop()

    def stop(self) -> None:
        self._stop.set()

    def _handle(self, topic: str, value: bytes, headers: dict[str, bytes]) -> None:
        s = self.seen
        kind = headers.get(MESSAGE_TYPE, b"")
        if topic == self.namer.model_events():
            self._model_event(kind, value)
        elif topic == self.namer.evaluations():
            s.evaluations.append(WindowEvaluated.FromString(value))
        elif topic == self.namer.alerts():
            self._alert(kind.decode(), value)
        elif topic == self.namer.training_results():
            t = TrainingCompleted.FromString(value)
            s.trainings.append(t)
            if t.succeeded:
                verdict = "passed" if t.gate_passed else "FAILED"
                self.note("trained", f"v{t.version} trained; gate {verdict}: {t.gate_summary}", int(t.version))
            else:
                self.note("trained", f"training failed: {t.error}")
        else:
            s.dead_letters += 1
            s.dlq_reasons.append(headers.get(DLQ_REASON, b"?").decode())

    def _model_event(self, kind: bytes, value: bytes) -> None:
        s = self.seen
        if kind == ROLLOUT_TYPE:
            self._rollout(RolloutDecided.FromString(value))
            return
        if kind == RETRAIN_TYPE:
            d = RetrainDecided.FromString(value)
            s.retrains.append(d)
            self.note("retrain", f"retrain {d.decision} ({d.trigger}): {d.reason}")
            return
        e = registry_pb2.ModelChanged.FromString(value)
        if e.kind == registry_pb2.MODEL_EVENT_KIND_REGISTERED:
            s.versions.append(e.version)
            self.note("registered", f"{e.model_name} v{e.version} registered (signed)", e.version)
        elif e.kind == registry_pb2.MODEL_EVENT_KIND_ALIAS_SET and e.alias == "champion":
            s.champion = e.version
            self.note("promoted", f"champion -> v{e.version} ({e.action} by {e.actor}): {e.reason}", e.version)
        elif e.kind == registry_pb2.MODEL_EVENT_KIND_ALIAS_SET:
            self.note("alias", f"{e.alias} -> v{e.version}: {e.reason}", e.version)
        elif e.kind == registry_pb2.MODEL_EVENT_KIND_STAGE_CHANGED:
            self.note("stage", f"v{e.version} -> {registry_pb2.Stage.Name(e.stage).lower()[6:]}: {e.reason}",
                      e.version)

    def _alert(self, kind: str, value: bytes) -> None:
        s = self.seen
        if kind == "loopline.monitor.v1.ArtifactRefused":
            r = ArtifactRefused.FromString(value)
            self.note("refused", f"{r.service} refused v{r.model_version} ({r.kind}): {r.reason}", r.model_version)
        elif kind == "loopline.monitor.v1.AlertResolved":
            done = AlertResolved.FromString(value)
            self.note("resolved", f"{done.kind} on v{done.model_version} resolved", done.model_version)
        elif kind == "loopline.monitor.v1.AlertRaised":
            a = AlertRaised.FromString(value)
            s.alerts += 1
            s.raised.append(a)
            self.note("alert", f"{a.severity} {a.kind} on v{a.model_version}: {a.summary}", a.model_version)
        else:  # an older monitor's DriftAlertRaised
            d = DriftAlertRaised.FromString(value)
            s.alerts += 1
            self.note("alert", f"drift on v{d.model_version}: {d.statistic} max {d.max_score:.2f}", d.model_version)

    def _rollout(self, r: RolloutDecided) -> None:
        self.seen.rollouts.append(r)
        evidence = "; ".join(f"{g.name} {g.challenger_events}/{g.challenger_n} vs {g.champion_events}/{g.champion_n}"
                             f" ({g.verdict})" for g in r.signals)
        text = (f"{r.mode} of v{r.challenger_version} against champion v{r.champion_version}: "
                f"{r.decision.replace('_', ' ')} after {r.elapsed_s:.0f}s: {r.reason}")
        self.note("rollout", f"{text} [{evidence}]" if evidence else text, int(r.challenger_version))
