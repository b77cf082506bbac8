"""on_label: ``loopline.labels.<dataset>`` -> labelled predictions -> performance; late labels swept.

Labels come hours or days after the prediction, or, when topics are consumed apart, before it: a
label is kept by the event id it labels and joined from whichever side arrives second. A label
whose prediction has not come within ``monitor_label_ttl_s`` goes to the dataset's dead-letter
topic with the reason, its original bytes unchanged.
"""

from __future__ import annotations

import asyncio
import logging

from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.labels import Label, decode_label

from loopline_monitor import metrics as m
from loopline_monitor.adapters.store import MonitorStore
from loopline_monitor.handlers import sweeping
from loopline_monitor.handlers.watch import Watch
from loopline_monitor.settings import Settings

log = logging.getLogger(__name__)


class LabelHandler:
    def __init__(self, store: MonitorStore, watch: Watch, lock: asyncio.Lock, publisher: Publisher,
                 namer: TopicNamer, settings: Settings) -> None:
        self.store = store
        self.watch = watch
        self.lock = lock
        self.publisher = publisher
        self.namer = namer
        self.s = settings

    decode = staticmethod(decode_label)

    async def on_label(self, label: Label, record: Record) -> None:
        """Keep the label (a repeat changes nothing) and give it to the predictions it labels."""
        async with self.lock:
            joined = await self.store.add_label(label.event_id, label.value, label.labelled_at, record.value,
                                                record.key, record.topic)
            if joined:
                await self.watch.add_labels(joined)
                await self.watch.flush()

    async def sweep(self, stop: asyncio.Event) -> None:
        """Dead-letter labels that waited longer than the TTL for their prediction, every sweep interval."""
        await sweeping.every(stop, self.s.monitor_label_sweep_s, self.sweep_once, "label")

    async def sweep_once(self) -> int:
        ttl = self.s.monitor_label_ttl_s
        expired = await self.store.expired_labels(ttl)
        await sweeping.dead_letter(self.publisher, self.namer, expired, "unmatched_label", lambda r: (
            f"no prediction with request id {r['event_id']} arrived within {ttl:g}s of its label"))
        for r in expired:
            m.LABELS_DEAD.labels(r["topic"].rsplit(".", 1)[-1]).inc()
        if expired:  # marked after the dead letters were acknowledged: a crash repeats, never loses
            await self.store.mark_dead([r["event_id"] for r in expired])
            log.info("labels dead-lettered", extra={"count": len(expired)})
        return len(expired)
