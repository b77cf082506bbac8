"""The TTL sweeps that labels and feedback share: every interval, dead-letter the rows that waited too long for
their other half (a prediction, a generation), then mark them, so a crash in between repeats, never loses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import DLQ_KIND, DLQ_REASON, DLQ_SOURCE

log = logging.getLogger(__name__)


async def every(stop: asyncio.Event, interval_s: float, sweep_once: Callable[[], Awaitable[int]], what: str) -> None:
    """Run ``sweep_once`` every ``interval_s`` until ``stop``; a failed sweep is logged and tried again."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        try:
            await sweep_once()
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again; the consumers report a dead Postgres
            log.warning(f"{what} sweep failed", extra={"error": repr(exc)[:300]})


async def dead_letter(publisher: Publisher, namer: TopicNamer, rows: Sequence[Any], kind: str,
                      reason: Callable[[Any], str]) -> None:
    """Each row's original bytes to its topic's dead letters, with the reason (rows: raw, key, topic)."""
    for r in rows:
        await publisher.publish(namer.dead_letter_for(r["topic"]), bytes(r["raw"]), key=r["key"],
                                headers=[(DLQ_REASON, reason(r)), (DLQ_KIND, kind),
                                         (DLQ_SOURCE, f"monitor:{r['topic']}")],
                                content_type="application/octet-stream")
