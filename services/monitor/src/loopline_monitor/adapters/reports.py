"""Evidently's own report of an evaluated window, stored beside the monitor's record of it."""

from __future__ import annotations

import asyncio
import re

from loopline_core.objstore import ObjectStore
from loopline_ml.drift import Dist
from loopline_ml.evidently_report import render_report
from loopline_ml.profile import Profile

BUCKET = "loopline-reports"


class Reports:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    async def store(self, model: str, version: int, spec: str, window_end: float, last_seq: int, profile: Profile,
                    columns: dict[str, Dist], prediction: Dist | None) -> tuple[str, str]:
        """Render Evidently's data drift report of the window against the version's profile (in a thread:
        it takes a second or so) and store its HTML and JSON; returns their s3:// URIs."""
        names = [n for n in profile.types if n in columns]
        pred = (profile.prediction, prediction) if profile.prediction is not None and prediction is not None \
            and prediction.n else None
        html, body = await asyncio.to_thread(render_report, {n: profile.dists[n] for n in names},
                                             {n: columns[n] for n in names}, {n: profile.types[n] for n in names},
                                             pred)
        stem = f"monitor/{model}/v{version}/{re.sub(r'[^A-Za-z0-9]+', '-', spec)}/{window_end:.3f}-{last_seq}"
        await self.objects.put_bytes(BUCKET, f"{stem}.html", html, content_type="text/html")
        await self.objects.put_bytes(BUCKET, f"{stem}.json", body, content_type="application/json")
        return f"s3://{BUCKET}/{stem}.html", f"s3://{BUCKET}/{stem}.json"
