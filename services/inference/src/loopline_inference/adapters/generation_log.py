"""The generation log: one ``Generation`` per LLM request to ``loopline.generations.<model>`` and one
``GuardrailTriggered`` to ``loopline.guardrails.<model>`` when a guardrail fired, keyed by request id.

As the prediction log, it never blocks serving: the handler only queues the message (synchronously, so
it can be called from the ``finally`` of a stream that is being closed); one task publishes. A full queue
or a publish that still fails after the retries is counted and dropped. Texts in the messages are
redacted by the caller before they get here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from google.protobuf.message import Message
from loopline.llm.v1.events_pb2 import Generation, GuardrailTriggered
from loopline_core.kafka import TopicNamer

from loopline_inference.metrics import GENERATION_LOG_DROPPED

log = logging.getLogger(__name__)

_STOP = object()
BATCH = 500


class Publishes(Protocol):
    """What the log needs of :class:`loopline_core.kafka.Publisher`."""

    async def publish_batch(self, topic: str, records: Sequence[tuple[str | bytes | None, bytes]], *,
                            message_type: str | None = ...) -> None: ...


class GenerationLog:
    def __init__(self, publisher: Publishes, namer: TopicNamer, *, capacity: int = 10_000, retries: int = 3,
                 retry_backoff_s: float = 0.2, drain_s: float = 10.0) -> None:
        self.publisher = publisher
        self.namer = namer
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.drain_s = drain_s
        self._queue: asyncio.Queue[tuple[str, str, Message] | object] = asyncio.Queue(maxsize=capacity)
        self._sender: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._sender = asyncio.create_task(self._run(), name="generation-log")

    def record(self, generation: Generation, triggered: GuardrailTriggered | None = None) -> None:
        """Queue the generation (and its guardrail event); never waits."""
        items: list[tuple[str, str, Message]] = [
            (self.namer.generations(generation.model_name), generation.request_id, generation)]
        if triggered is not None:
            items.append((self.namer.guardrails(triggered.model_name), triggered.request_id, triggered))
        for item in items:
            if self._closing:
                GENERATION_LOG_DROPPED.labels("closed").inc()
                continue
            try:
                self._queue.put_nowait(item)
            except asyncio.QueueFull:
                GENERATION_LOG_DROPPED.labels("full").inc()

    async def close(self) -> None:
        self._closing = True
        if self._sender is None:
            return
        try:
            async with asyncio.timeout(self.drain_s):
                await self._queue.put(_STOP)
                await self._sender
        except TimeoutError:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            GENERATION_LOG_DROPPED.labels("shutdown").inc(self._queue.qsize())
        self._sender = None

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if _STOP in batch:
                stop = True
            groups: dict[tuple[str, str], list[tuple[str | bytes | None, bytes]]] = {}
            for item in batch:
                if isinstance(item, tuple):
                    topic, key, message = item
                    groups.setdefault((topic, message.DESCRIPTOR.full_name), []).append(
                        (key, message.SerializeToString()))
            for (topic, kind), records in groups.items():
                await self._send(topic, kind, records)

    async def _send(self, topic: str, kind: str, records: list[tuple[str | bytes | None, bytes]]) -> None:
        """One produce batch per topic (acknowledged once), retried as a whole, then counted as failed."""
        for attempt in range(self.retries + 1):
            try:
                await self.publisher.publish_batch(topic, records, message_type=kind)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker's failure: retried, then counted
                if attempt < self.retries:
                    await asyncio.sleep(self.retry_backoff_s * 2 ** attempt)
                    continue
                GENERATION_LOG_DROPPED.labels("failed").inc(len(records))
                log.error("generation events not published after retries",  # noqa: TRY400 - a verdict
                          extra={"topic": topic, "records": len(records), "error": repr(exc)})
            return
