"""on_prediction: ``loopline.predictions.<model>`` -> drift history, reports, ``loopline.monitor.alerts``."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.monitor.v1.events_pb2 import DriftAlertRaised
from loopline_core.errors import invalid
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.objstore import ObjectStore
from loopline_core.outbox import OutboxEvent, Relay
from loopline_ml.drift import psi

from loopline_monitor.adapters.references import References
from loopline_monitor.adapters.store import MonitorStore
from loopline_monitor.domain.alerting import next_state
from loopline_monitor.metrics import ALERTS, MAX_PSI
from loopline_monitor.settings import Settings

log = logging.getLogger(__name__)
REPORTS = "loopline-reports"


_parse = proto(PredictionLogged, "metadata.event_id", "model_name")


class PredictionHandler:
    def __init__(self, store: MonitorStore, refs: References, objects: ObjectStore, outbox: Relay,
                 namer: TopicNamer, settings: Settings) -> None:
        self.store = store
        self.refs = refs
        self.objects = objects
        self.outbox = outbox
        self.namer = namer
        self.s = settings
        self._since: Counter[tuple[str, int]] = Counter()

    @staticmethod
    def decode(record: Record) -> PredictionLogged:
        msg = _parse(record)
        if len(msg.inputs) != len(msg.feature_names):
            raise invalid("a prediction needs one input per feature name")
        return msg

    async def on_prediction(self, p: PredictionLogged, _record: Record) -> None:
        """Consumes ``loopline.predictions.<model>``; every ``monitor_every`` new rows, checks drift."""
        added = await self.store.add(p.metadata.event_id, p.model_name, p.model_version, list(p.inputs),
                                     p.outputs[0] if p.outputs else 0.0, p.latency_ms, p.entity_id)
        if not added:
            return
        key = (p.model_name, p.model_version)
        self._since[key] += 1
        if self._since[key] >= self.s.monitor_every:
            self._since[key] = 0
            await self.evaluate(p.model_name, p.model_version)

    async def evaluate(self, model: str, version: int) -> None:
        window = await self.store.window(model, version, self.s.monitor_window)
        if len(window) < self.s.monitor_every:
            return
        ref, names = await self.refs.get(model, version)
        scores = psi(ref, window, names)
        worst = max(scores.values(), default=0.0)
        MAX_PSI.labels(model).set(worst)
        state, alerts, since = await self.store.state(model, version)
        t = next_state(state, worst, self.s.monitor_psi_threshold, self.s.monitor_psi_clear, since + 1,
                       self.s.monitor_repeat_every)
        since = 0 if t.raise_alert else since + 1
        event: OutboxEvent | None = None
        if t.raise_alert:
            alerts += 1
            alert = DriftAlertRaised(
                metadata=metadata("monitor", derived_id("drift", model, str(version), str(alerts))),
                model_name=model, model_version=version, statistic="psi", threshold=self.s.monitor_psi_threshold,
                feature_scores=scores, max_score=worst, window_size=len(window))
            event = OutboxEvent(alert.metadata.event_id, self.namer.alerts(), alert.SerializeToString(), key=model,
                                message_type="loopline.monitor.v1.DriftAlertRaised")
        # the alert goes out through the outbox, committed with the state that raised it
        await self.store.record(model, version, scores, len(window), t.state, alerts, since, event)
        if event is not None:
            ALERTS.labels(model).inc()
            log.warning("drift alert", extra={"model": model, "version": version, "max_psi": worst})
            await self.outbox.flush(self.s.outbox_flush_s)
        now = time.time()
        report = {"model": model, "version": version, "at": now, "statistic": "psi", "scores": scores,
                  "max": worst, "window": len(window), "state": t.state}
        await self.objects.put_bytes(REPORTS, f"drift/{model}/{now:.3f}-v{version}.json", json.dumps(report).encode(),
                                     content_type="application/json")
