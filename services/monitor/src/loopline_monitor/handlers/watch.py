"""The watch over served versions: windows and labelled rows in, evaluations and alerts out.

Per (model, version): its reference profile, its drift windows, its newest labelled predictions
(overall and per variant) and its alert episodes. State lives in memory and is rebuilt from
Postgres when a version is first seen after a (re)start; every evaluation is written with its alert
states and the events they publish in one transaction (outbox), so a crash between the two neither
loses an alert nor sends one twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from loopline.monitor.v1.events_pb2 import AlertRaised, AlertResolved, ColumnDrift, WindowEvaluated
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import OutboxEvent, Relay
from loopline_ml.drift import ColumnTest
from loopline_ml.profile import Profile

from loopline_monitor import metrics as m
from loopline_monitor.adapters.references import References
from loopline_monitor.adapters.reports import Reports
from loopline_monitor.adapters.store import Joined, MonitorStore
from loopline_monitor.domain import alerting
from loopline_monitor.domain.evaluation import Finding, Labelled, Limits, evaluate_window, performance
from loopline_monitor.domain.windows import Row, Spec, Window
from loopline_monitor.settings import Settings

log = logging.getLogger(__name__)
DRIFT_KINDS = ("feature_drift", "prediction_drift")
NO_PROFILE = "no_reference_profile"


@dataclass
class Watched:
    model: str
    version: int
    profile: Profile | None
    names: list[str]
    windows: list[Window]
    labelled: dict[str, deque[Joined]]
    """variant ("" for all) -> newest labelled predictions."""
    predicted: int = 0
    since_perf: int = 0
    rejected: int = 0
    alerts: dict[str, alerting.State] = field(default_factory=dict)
    evaluations: dict[str, int] = field(default_factory=dict)


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def _column(t: ColumnTest) -> ColumnDrift:
    return ColumnDrift(column=t.column, column_type=t.column_type, stattest=t.stattest, score=t.score,
                       threshold=t.threshold, drifted=t.drifted)


class Watch:
    def __init__(self, store: MonitorStore, refs: References, reports: Reports, outbox: Relay, namer: TopicNamer,
                 settings: Settings) -> None:
        self.store = store
        self.refs = refs
        self.reports = reports
        self.outbox = outbox
        self.namer = namer
        self.s = settings
        self.specs = [Spec.parse(w) for w in settings.monitor_windows]
        self.policy = alerting.Policy(settings.monitor_alert_n, settings.monitor_alert_m, settings.monitor_repeat_s)
        self.limits = Limits(settings.monitor_quality_limits, settings.monitor_latency_limits_ms,
                             settings.monitor_error_limits)
        self.silences = [alerting.Silence(str(x.get("model", "*")), str(x.get("version", "*")),
                                          str(x.get("kind", "*")), float(x.get("until", float("inf"))),
                                          str(x.get("reason", ""))) for x in settings.monitor_silences]
        self.watched: dict[tuple[str, int], Watched] = {}
        self._unflushed = False

    async def version(self, model: str, version: int) -> Watched:
        """The watch over one version, rebuilt from the store the first time it is seen (NOT_FOUND from the
        registry for an unknown version propagates: the prediction is dead-lettered)."""
        key = (model, version)
        if key in self.watched:
            return self.watched[key]
        profile, names = await self.refs.get(model, version)
        mon = profile.monitoring if profile else {}
        label_window = self.s.monitor_label_window or int(mon.get("window_labels", 500))
        w = Watched(model, version, profile, names, [Window(s, names) for s in self.specs],
                    {"": deque(maxlen=label_window)})
        marks = await self.store.windows(model, version)
        for win in w.windows:
            seq, next_end, count = marks.get(str(win.spec), (0, None, 0))
            since = next_end - win.spec.size if win.spec.by == "time" and next_end is not None else None
            rows = await self.store.window_rows(model, version, int(win.spec.size), since)
            win.restore(rows, seq, next_end)
            w.evaluations[str(win.spec)] = count
        for j in await self.store.labelled(model, version, label_window):
            self._label(w, j)
        w.predicted = await self.store.predicted(model, version)
        stored = await self.store.alert_states(model, version)
        w.alerts = {k: alerting.State.from_json(st) for k, st in stored.items()}
        self.watched[key] = w
        if profile is None:
            await self._no_profile(w)
        return w

    # ---- rows in --------------------------------------------------------------------------------

    async def add_rows(self, w: Watched, rows: list[Row]) -> None:
        """New predictions of a version: feed every window, evaluate those that are due."""
        w.predicted += sum(not r.failed for r in rows)
        for r in rows:
            for win in w.windows:
                if win.add(r):
                    await self._evaluate(w, win)

    async def add_labels(self, joined: list[Joined]) -> None:
        """Labelled predictions: into their version's performance windows; evaluate when due."""
        for j in joined:
            w = await self.version(j.model, j.version)
            self._label(w, j)
            w.since_perf += 1
            m.LABELS_JOINED.labels(j.model).inc()
            m.LABEL_DELAY.labels(j.model).observe(max(0.0, j.labelled_at - j.at))
            if w.since_perf >= self.s.monitor_perf_every and len(w.labelled[""]) >= self.s.monitor_perf_min:
                w.since_perf = 0
                await self._performance(w)

    def _label(self, w: Watched, j: Joined) -> None:
        maxlen = w.labelled[""].maxlen
        w.labelled[""].append(j)
        if j.variant:
            w.labelled.setdefault(j.variant, deque(maxlen=maxlen)).append(j)

    # ---- evaluations ----------------------------------------------------------------------------

    async def _evaluate(self, w: Watched, win: Window) -> None:
        spec = str(win.spec)
        snap = win.snapshot()
        if w.profile is None or snap.size == 0:
            win.evaluated()
            return
        started = time.perf_counter()
        ev = evaluate_window(snap, w.profile, self.limits, w.rejected)
        w.rejected = 0
        m.EVAL_SECONDS.labels(w.model).observe(time.perf_counter() - started)
        count = w.evaluations.get(spec, 0) + 1
        w.evaluations[spec] = count
        crossed = [f for f in ev.findings if f.crossed]
        every = self.s.monitor_report_every
        report = ("", "")
        drifted = any(f.kind in DRIFT_KINDS for f in crossed)
        if drifted or (every and count % every == 0):
            report = self.reports.submit(w.model, w.version, spec, snap.end, snap.last_seq, w.profile, snap.columns,
                                         snap.prediction, crossed=drifted)
        eid = derived_id("window", w.model, str(w.version), spec, str(snap.last_seq))
        record = WindowEvaluated(
            metadata=metadata("monitor", eid), model_name=w.model, model_version=w.version, window=spec,
            window_size=snap.size, window_start=_ts(snap.start), window_end=_ts(snap.end),
            columns=[_column(t) for t in ev.columns], drift_share=ev.drift_share, dataset_drift=ev.dataset_drift,
            metrics=ev.metrics, report_uri=report[0], report_json_uri=report[1], crossed=[f.kind for f in crossed])
        if ev.prediction is not None:
            record.prediction.CopyFrom(_column(ev.prediction))
        m.DRIFT_SHARE.labels(w.model, str(w.version)).set(ev.drift_share)
        for t in ev.columns:
            m.COLUMN_SCORE.labels(w.model, t.column, t.stattest).set(t.score)
        win.evaluated()
        await self.decide(w, spec, "", snap.start, snap.end, snap.size, ev.findings, record, report,
                           (win.evaluated_seq, win.next_end, count))

    async def _performance(self, w: Watched) -> None:
        mon = w.profile.monitoring if w.profile else {}
        variants = sorted(w.labelled)
        for variant in variants:
            rows = list(w.labelled[variant])
            if len(rows) < self.s.monitor_perf_min:
                continue
            labelled = Labelled(np.array([r.label for r in rows]), np.array([r.score for r in rows]),
                                np.array([max(0.0, r.labelled_at - r.at) for r in rows]))
            figures, findings = performance(labelled, mon, w.predicted)
            for k, v in figures.items():
                m.PERFORMANCE.labels(w.model, str(w.version), variant or "all", k).set(v)
            spec = f"labels:{w.labelled[''].maxlen}"
            start, end = min(r.at for r in rows), max(r.at for r in rows)
            eid = derived_id("performance", w.model, str(w.version), variant, str(w.predicted), str(len(rows)),
                             f"{end:.6f}")
            record = WindowEvaluated(metadata=metadata("monitor", eid), model_name=w.model, model_version=w.version,
                                     window=spec, window_size=len(rows), window_start=_ts(start), window_end=_ts(end),
                                     metrics=figures, variant=variant, crossed=[f.kind for f in findings if f.crossed])
            # alerts on the version as a whole; per-variant figures are recorded, not alerted on
            await self.decide(w, spec, variant, start, end, len(rows), findings if not variant else [], record,
                               ("", ""), None)

    async def decide(self, w: Watched, spec: str, variant: str, start: float, end: float, size: int,
                     findings: list[Finding], record: WindowEvaluated, report: tuple[str, str],
                     window: tuple[int, float | None, int] | None, policy: alerting.Policy | None = None) -> None:
        """Step the alert episodes of ``findings`` and record the evaluation, its alert states and the events
        they publish in one transaction (outbox). ``policy`` replaces the N-of-M one (budgets: 1 of 1)."""
        now = time.time()
        events = [OutboxEvent(record.metadata.event_id, self.namer.evaluations(), record.SerializeToString(),
                              key=w.model, message_type=WindowEvaluated.DESCRIPTOR.full_name)]
        states: dict[str, dict[str, Any]] = {}
        raised: list[AlertRaised] = []
        for f in findings:
            state = w.alerts.get(f.kind, alerting.State())
            new_id = derived_id("alert", w.model, str(w.version), f.kind, record.metadata.event_id)
            st = alerting.step(state, f.crossed, f.severity or "warning", now=now, window_start=start,
                               window_end=end, policy=policy or self.policy, new_id=new_id)
            w.alerts[f.kind] = st.state
            states[f.kind] = dataclasses.asdict(st.state)
            if st.action in (alerting.Action.RAISE, alerting.Action.REPEAT):
                silence = alerting.silenced(self.silences, w.model, w.version, f.kind, now)
                if silence is not None:
                    m.SILENCED.labels(w.model, f.kind).inc()
                    continue
                s = st.state
                aid = s.episode_id if st.action is alerting.Action.RAISE else \
                    derived_id("alert", s.episode_id, str(s.repeat))
                a = AlertRaised(metadata=metadata("monitor", aid, correlation_id=record.metadata.event_id),
                                model_name=w.model, model_version=w.version, kind=f.kind, severity=s.severity,
                                summary=f.summary, window=spec, window_size=size, window_start=_ts(start),
                                window_end=_ts(end), onset=_ts(s.onset), metric=f.metric, value=f.value,
                                threshold=f.threshold, columns=[_column(t) for t in f.columns],
                                metrics=record.metrics, report_uri=report[0], report_json_uri=report[1],
                                repeat=s.repeat, variant=variant, episode_id=s.episode_id)
                raised.append(a)
                events.append(OutboxEvent(aid, self.namer.alerts(), a.SerializeToString(), key=w.model,
                                          message_type=AlertRaised.DESCRIPTOR.full_name))
            elif st.action is alerting.Action.RESOLVE:
                r = AlertResolved(metadata=metadata("monitor", derived_id("resolved", st.state.episode_id)),
                                  model_name=w.model, model_version=w.version, kind=f.kind,
                                  episode_id=st.state.episode_id, summary=f.summary, window=spec)
                events.append(OutboxEvent(r.metadata.event_id, self.namer.alerts(), r.SerializeToString(),
                                          key=w.model, message_type=AlertResolved.DESCRIPTOR.full_name))
        summary = {"window": spec, "variant": variant, "size": size, "start": start, "end": end,
                   "metrics": dict(record.metrics), "crossed": list(record.crossed), "report": report[0]}
        await self.store.record(w.model, w.version, spec, variant, summary, window, states, events)
        for a in raised:
            m.ALERTS.labels(a.model_name, a.kind, a.severity).inc()
            log.warning("alert", extra={"model": a.model_name, "version": a.model_version, "kind": a.kind,
                                        "severity": a.severity, "summary": a.summary, "repeat": a.repeat})
        self._unflushed = True

    async def _no_profile(self, w: Watched) -> None:
        """A version without a reference profile: drift is not evaluated; one critical data-quality alert
        says so (not a retry loop)."""
        if NO_PROFILE in w.alerts:
            return
        aid = derived_id("alert", w.model, str(w.version), NO_PROFILE)
        state = alerting.State(active=True, episode_id=aid, repeat=1, last_sent=time.time(), severity="critical")
        w.alerts[NO_PROFILE] = state
        a = AlertRaised(metadata=metadata("monitor", aid), model_name=w.model, model_version=w.version,
                        kind="data_quality", severity="critical", metric=NO_PROFILE, repeat=1, episode_id=aid,
                        summary=f"v{w.version} has no reference profile in its artifact: drift is not evaluated "
                                f"for it (performance still is)")
        await self.store.record(w.model, w.version, "-", "", {"not_ready": NO_PROFILE}, None,
                                {NO_PROFILE: dataclasses.asdict(state)},
                                [OutboxEvent(aid, self.namer.alerts(), a.SerializeToString(), key=w.model,
                                             message_type=AlertRaised.DESCRIPTOR.full_name)])
        m.ALERTS.labels(w.model, "data_quality", "critical").inc()
        log.warning("no reference profile", extra={"model": w.model, "version": w.version})
        self._unflushed = True

    async def flush(self) -> None:
        """Once per batch, not per evaluation: wait for the relay to publish what this batch's evaluations
        committed to the outbox (they would go out anyway; this keeps alerts prompt)."""
        if self._unflushed:
            self._unflushed = False
            await self.outbox.flush(self.s.outbox_flush_s)
