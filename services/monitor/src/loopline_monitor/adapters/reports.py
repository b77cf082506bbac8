"""Evidently's own report of an evaluated window, stored beside the monitor's record of it.

Rendering one takes about a second (Evidently and plotly), so it happens off the consumer path: an
evaluation names the report's URIs at once (they are derived from the window) and puts the work on
a queue that one background task drains. A crash before it is drained loses that report, never an
evaluation or an alert (the report is derived from the window; the alert still says which it was).
A full queue drops routine reports, never those of windows that crossed a check.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from loopline_core.objstore import ObjectStore
from loopline_ml.drift import Dist
from loopline_ml.evidently_report import render_report
from loopline_ml.profile import Profile
from prometheus_client import Counter

BUCKET = "loopline-reports"
REPORTS = Counter("loopline_monitor_reports_total", "Evidently reports, by outcome", ["outcome"])
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    html_key: str
    json_key: str
    profile: Profile
    columns: dict[str, Dist]
    prediction: Dist | None


class Reports:
    def __init__(self, objects: ObjectStore, max_pending: int = 16) -> None:
        self.objects = objects
        self.max_pending = max_pending
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()

    def submit(self, model: str, version: int, spec: str, window_end: float, last_seq: int, profile: Profile,
               columns: dict[str, Dist], prediction: Dist | None, *, crossed: bool) -> tuple[str, str]:
        """Queue Evidently's data drift report of a window against the version's profile; returns the s3://
        URIs its HTML and JSON will have ("", "" when a routine report was dropped: the queue is full)."""
        stem = f"monitor/{model}/v{version}/{re.sub(r'[^A-Za-z0-9]+', '-', spec)}/{window_end:.3f}-{last_seq}"
        job = Job(f"{stem}.html", f"{stem}.json", profile, columns, prediction)
        if self._queue.qsize() >= self.max_pending and not crossed:
            REPORTS.labels("dropped").inc()
            return "", ""
        self._queue.put_nowait(job)  # a crossing window's report is queued even past max_pending
        return f"s3://{BUCKET}/{job.html_key}", f"s3://{BUCKET}/{job.json_key}"

    async def run(self) -> None:
        """Render and store queued reports until :meth:`close`."""
        while (job := await self._queue.get()) is not None:
            try:
                await self._store(job)
                REPORTS.labels("stored").inc()
            except Exception as exc:  # noqa: BLE001 - a report is derived; the evaluation it belongs to stands
                REPORTS.labels("failed").inc()
                log.warning("report not stored", extra={"key": job.html_key, "error": repr(exc)[:300]})

    async def close(self) -> None:
        """Finish what is queued, then stop :meth:`run`."""
        await self._queue.put(None)

    async def _store(self, job: Job) -> None:
        p = job.profile
        names = [n for n in p.types if n in job.columns and job.columns[n].n]
        pred = (p.prediction, job.prediction) if p.prediction is not None and job.prediction is not None \
            and job.prediction.n else None
        html, body = await asyncio.to_thread(render_report, {n: p.dists[n] for n in names},
                                             {n: job.columns[n] for n in names}, {n: p.types[n] for n in names},
                                             pred, float(p.monitoring.get("drift_share", 0.5)))
        await self.objects.put_bytes(BUCKET, job.html_key, html, content_type="text/html")
        await self.objects.put_bytes(BUCKET, job.json_key, body, content_type="application/json")
