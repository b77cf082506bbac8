"""on_predictions: ``loopline.predictions.<model>`` -> windows, evaluations, alerts.

A prediction the monitor cannot use is dead-lettered with the reason and counted (its version's
data-quality rate includes it): one that does not decode, has no outputs, a non-finite value, or
lacks a feature of its version's profile; one of a version the registry does not know; one of a
version whose artifact was refused. None of them holds the partition.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter

from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline_core.errors import invalid
from loopline_core.kafka import Record
from loopline_core.kafka.codec import proto
from loopline_core.kafka.delivery import Item

from loopline_monitor import metrics as m
from loopline_monitor.adapters.store import MonitorStore, NewPrediction
from loopline_monitor.domain.windows import Row
from loopline_monitor.handlers.watch import Watch

_parse = proto(PredictionLogged, "metadata.event_id", "model_name")


class PredictionHandler:
    def __init__(self, store: MonitorStore, watch: Watch, lock: asyncio.Lock) -> None:
        self.store = store
        self.watch = watch
        self.lock = lock
        self.rejected: Counter[tuple[str, int]] = Counter()

    def decode(self, record: Record) -> PredictionLogged:
        try:
            p: PredictionLogged = _parse(record)
        except Exception:
            m.PREDICTIONS.labels("?", "undecodable").inc()
            raise
        problem = _problem(p)
        if problem:
            m.PREDICTIONS.labels(p.model_name, "rejected").inc()
            self.rejected[(p.model_name, p.model_version)] += 1
            raise invalid(problem)
        return p

    async def on_predictions(self, items: list[Item[PredictionLogged]]) -> None:
        """Consumes ``loopline.predictions.<model>`` in batches: every row goes into the store once (by its
        event id), then into its version's windows."""
        async with self.lock:
            rows: list[NewPrediction] = []
            for it in items:
                p = it.value
                w = await self.watch.version(p.model_name, p.model_version)
                given = dict(zip(p.feature_names, p.inputs, strict=True))
                missing = [n for n in w.names if n not in given]
                if missing:
                    self.rejected[(p.model_name, p.model_version)] += 1
                    m.PREDICTIONS.labels(p.model_name, "rejected").inc()
                    raise invalid(f"missing feature {', '.join(missing)} of {p.model_name} v{p.model_version}")
                values = [given[n] for n in w.names]
                ranges = (w.profile.monitoring.get("ranges", {}) if w.profile else {})
                out = any(not (lo <= given[n] <= hi) for n, (lo, hi) in ranges.items() if n in given)
                at = p.metadata.occurred_at.ToNanoseconds() / 1e9 if p.metadata.HasField("occurred_at") else \
                    it.record.timestamp_ms / 1000.0
                rows.append(NewPrediction(p.metadata.event_id, p.request_id or p.metadata.event_id, p.model_name,
                                          p.model_version, p.variant, p.role, p.shadow, values,
                                          float(p.outputs[0]) if p.outputs else 0.0, p.latency_ms, bool(p.error),
                                          out, at))
            added, joined = await self.store.add(rows)
            m.PREDICTIONS.labels(items[0].value.model_name, "repeat").inc(len(rows) - len(added))
            by_version: dict[tuple[str, int], list[Row]] = {}
            for new_row, seq in added:
                m.SERVED.labels(new_row.model, str(new_row.version), new_row.role, new_row.variant).inc()
                by_version.setdefault((new_row.model, new_row.version), []).append(
                    Row(seq, new_row.at, tuple(new_row.inputs), new_row.score, new_row.latency_ms, new_row.failed,
                        new_row.out_of_range))
            for (model, version), new in by_version.items():
                w = await self.watch.version(model, version)
                w.rejected += self.rejected.pop((model, version), 0)
                m.PREDICTIONS.labels(model, "added").inc(len(new))
                await self.watch.add_rows(w, new)
            await self.watch.add_labels(joined)
            await self.watch.flush()


def _problem(p: PredictionLogged) -> str:
    """Why a decoded prediction cannot be used ("" when it can)."""
    if len(p.inputs) != len(p.feature_names):
        return f"{len(p.inputs)} inputs for {len(p.feature_names)} feature names"
    bad = [n for n, v in zip(p.feature_names, p.inputs, strict=True) if not math.isfinite(v)]
    if bad:
        return f"non-finite value of {', '.join(bad)}"
    if not p.error and (not p.outputs or not math.isfinite(p.outputs[0])):
        return "a prediction without a finite output (and no error)"
    if p.model_version <= 0:
        return f"model_version {p.model_version} is not a version"
    return ""
