"""A transactional outbox: an event is written in the same transaction as the change it reports,
and a relay publishes it to Kafka afterwards.

Publishing after a commit loses the event when the publish fails (a retried request finds the
change already made and sends nothing); publishing before it announces a change that may roll
back. Here the event is a row in the service's own ``outbox`` table, inserted by :func:`enqueue`
inside the caller's transaction, so it exists exactly when the change does. A :class:`Relay` then
publishes pending rows in the order they were created and marks them published.

Delivery is at least once: a relay that dies between the broker's acknowledgement and the mark
publishes the row again on its next pass (consumers dedupe by the event id, which is in the
payload's metadata and in the ``x-loopline-event-id`` header). Nothing is lost: a row stays
pending until a publish of it was acknowledged.

Several replicas may run a relay on the same table: rows are claimed ``FOR UPDATE SKIP LOCKED``,
so no row is sent by two relays at once, and a relay holds back any row whose key has an earlier
pending row it did not claim, so events of one key (one aggregate) reach Kafka in order. Creation
order is commit order for one key as long as writers of that key serialise (a row or advisory lock
taken before :func:`enqueue`), as the services' stores do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from opentelemetry import trace
from prometheus_client import Counter

from loopline_core.db import Migration
from loopline_core.kafka.records import EVENT_ID
from loopline_core.telemetry import extract_headers, inject_headers

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("loopline.outbox")

PUBLISHED = Counter("loopline_outbox_published_total", "Outbox rows published and marked", ["schema"])
FAILURES = Counter("loopline_outbox_failures_total", "Relay passes that failed (then backed off)",
                   ["schema", "stage"])

_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})

_SQL = """
create table outbox (
    seq bigserial not null unique,
    event_id text primary key,
    topic text not null,
    key bytea,
    value bytea not null,
    headers jsonb not null default '[]',
    content_type text not null,
    message_type text,
    created_at timestamptz not null default clock_timestamp(),
    published_at timestamptz,
    attempts int not null default 0,
    last_error text);
create index outbox_pending on outbox (seq) where published_at is null;
create index outbox_pending_key on outbox (key, seq) where published_at is null;
create index outbox_published_at on outbox (published_at) where published_at is not null;
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('loopline_outbox_' || tg_table_schema, '');
    return null;
end $$;
create trigger outbox_notify after insert on outbox for each statement execute function outbox_notify();
"""


def outbox_migration(version: int) -> Migration:
    """The migration that creates ``outbox`` in the calling service's schema; append it to the
    service's own list with its next version number."""
    return Migration(version, "outbox", _SQL)


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that a commit of new outbox rows in ``schema`` notifies."""
    return f"loopline_outbox_{schema}"


@dataclass(frozen=True)
class OutboxEvent:
    """One record to publish. ``event_id`` must be derived from the change it reports (see
    :func:`loopline_core.events.derived_id`), so a retried request enqueues the same row, not a second."""

    event_id: str
    topic: str
    value: bytes
    key: str | bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    content_type: str = "application/x-protobuf"
    message_type: str | None = None


class OutboxPublishError(Exception):
    """A relay pass stopped at a row the publisher could not send (the cause is chained)."""


class Publishes(Protocol):
    """What the relay needs of :class:`loopline_core.kafka.Publisher`."""

    async def publish(self, topic: str, value: bytes, *, key: str | bytes | None = ...,
                      headers: Iterable[tuple[str, bytes]] = ..., content_type: str = ...,
                      message_type: str | None = ...) -> None: ...


def _encode_headers(headers: Iterable[tuple[str, bytes]]) -> str:
    return json.dumps([[k, base64.b64encode(v).decode()] for k, v in headers])


def _decode_headers(raw: str) -> list[tuple[str, bytes]]:
    return [(k, base64.b64decode(v)) for k, v in json.loads(raw)]


async def enqueue(conn: asyncpg.Connection, event: OutboxEvent) -> bool:
    """Add ``event`` to the outbox inside the caller's open transaction; False if its id is already there.

    The current trace context is stored with it, so the relay's publish continues the trace of the
    request that made the change.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("enqueue() must run inside the transaction that makes the change it reports")
    key = event.key.encode() if isinstance(event.key, str) else event.key
    headers = inject_headers([(k, v) for k, v in event.headers if k != EVENT_ID])
    added = await conn.fetchval(
        "insert into outbox(event_id, topic, key, value, headers, content_type, message_type) "
        "values ($1, $2, $3, $4, $5::jsonb, $6, $7) on conflict (event_id) do nothing returning true",
        event.event_id, event.topic, key, event.value, _encode_headers(headers), event.content_type,
        event.message_type)
    return bool(added)


class Relay:
    """Publishes the pending rows of ``<schema>.outbox`` and marks them published.

    It wakes on the NOTIFY that a commit of new rows sends, or every ``poll_interval_s`` (in case a
    notification was missed: a reconnect, a row inserted by hand), drains in batches of
    ``batch_size``, and on a failure (broker or database) counts it, logs it and backs off
    exponentially up to ``max_backoff_s``. A pass stops at the first row that fails to publish, so
    rows never overtake an earlier one: a row that can never be published (a record the broker
    refuses) holds the rows behind it, and shows as ``attempts``/``last_error`` on its row and as
    failures in ``loopline_outbox_failures_total``.

    Args:
        pool: a pool whose search path starts with ``schema`` (:func:`loopline_core.db.create_pool`).
        schema: the service's schema (the NOTIFY channel and the metrics label).
        publisher: the service's publisher; it must stay started until :meth:`stop` returned.
        retention_s: published rows older than this are deleted (about every ``retention_s / 24``).
    """

    def __init__(self, pool: asyncpg.Pool, schema: str, publisher: Publishes, *, batch_size: int = 100,
                 poll_interval_s: float = 1.0, backoff_s: float = 0.2, max_backoff_s: float = 30.0,
                 publish_timeout_s: float = 30.0, stop_timeout_s: float = 10.0,
                 retention_s: float = 7 * 86_400.0) -> None:
        self.pool = pool
        self.schema = schema
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.publish_timeout_s = publish_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.retention_s = retention_s
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.pool.PoolConnectionProxy | None = None
        self._pruned_at: float | None = None
        self._started = 0
        """Passes begun."""
        self._drained = 0
        """The number of the last pass that succeeded and found less than a full batch."""
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        """LISTEN for new rows and start relaying in the background."""
        if self._task is not None:
            raise RuntimeError("relay already started")
        try:
            conn = await self.pool.acquire()
            await conn.add_listener(channel(self.schema), self._notified)
            self._listener = conn
        except (OSError, asyncpg.PostgresError):
            # Polling alone still delivers every row; only the latency is worse.
            log.warning("outbox relay cannot LISTEN; polling only", exc_info=True, extra={"schema": self.schema})
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.schema}")

    async def stop(self) -> None:
        """Publish what is pending (within ``stop_timeout_s``), then stop; call before the publisher stops."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.stop_timeout_s)
            except TimeoutError:
                # Cancelled mid-pass: its transaction rolls back and the rows stay pending.
                log.warning("outbox relay did not finish in time; pending rows wait for the next start",
                            extra={"schema": self.schema})
            self._task = None
        if self._listener is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._listener.remove_listener(channel(self.schema), self._notified)
            await self.pool.release(self._listener)
            self._listener = None

    def _notified(self, *_args: Any) -> None:
        self._wake.set()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wake the relay and wait until a pass begun after this call has drained the outbox.

        A writer calls it after its commit so that, normally, its event is on Kafka when it
        returns (a consumer commits its offset only after that, and a gRPC caller sees the event
        follow its answer at once). False when that did not happen within ``timeout_s`` (the
        broker is down, the relay is stopped): the event is safe in the outbox all the same and
        goes out later, so callers carry on.
        """
        if self._task is None or self._stopping.is_set():
            return False
        target = self._started + 1
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(lambda: self._drained >= target)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Relay until :meth:`stop`; the last pass after the stop flushes what is pending."""
        failures = 0
        while True:
            stopping = self._stopping.is_set()
            self._wake.clear()
            self._started += 1
            number = self._started
            try:
                published = await self.relay_once()
                await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is retried after a back-off, never fatal
                failures += 1
                delay = min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)
                stage = "publish" if isinstance(exc, OutboxPublishError) else "database"
                FAILURES.labels(self.schema, stage).inc()
                log.warning("outbox relay failed; backing off", extra={
                    "schema": self.schema, "stage": stage, "error": repr(exc.__cause__ or exc),
                    "attempt": failures, "backoff_s": delay})
                if stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            failures = 0
            if published < self.batch_size:
                async with self._progress:
                    self._drained = number
                    self._progress.notify_all()
            if stopping:
                if published < self.batch_size:
                    return
                continue
            if published >= self.batch_size:
                continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def relay_once(self) -> int:
        """One pass: claim up to ``batch_size`` pending rows, publish them in order, mark them.

        Returns how many were published. Raises :class:`OutboxPublishError` after marking the rows
        before the one that failed (those stay published; the failed one and the rest stay pending).
        """
        error: Exception | None = None
        done: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "select event_id, seq, topic, key, value, headers::text as headers, content_type, message_type "
                "from outbox where published_at is null order by seq limit $1 for update skip locked",
                self.batch_size)
            if not rows:
                return 0
            held = await self._held_back(conn, rows)
            for row in rows:
                if row["key"] is not None and row["seq"] > held.get(row["key"], row["seq"]):
                    continue  # an earlier row of this key is another relay's (or not yet committed)
                try:
                    await self._publish(row)
                except Exception as exc:  # noqa: BLE001 - recorded on the row, re-raised after the commit
                    error = exc
                    await conn.execute("update outbox set attempts = attempts + 1, last_error = $2 "
                                       "where event_id = $1", row["event_id"], repr(exc)[:2000])
                    break
                done.append(row["event_id"])
            if done:
                await conn.execute("update outbox set published_at = clock_timestamp() "
                                   "where event_id = any($1::text[])", done)
        PUBLISHED.labels(self.schema).inc(len(done))
        if error is not None:
            raise OutboxPublishError(self.schema) from error
        return len(done)

    async def _held_back(self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> dict[bytes, int]:
        """Key -> seq of its earliest pending row that this pass did not claim; claimed rows of that
        key after it must wait, so that one key's events are published in order."""
        keys = list({r["key"] for r in rows if r["key"] is not None})
        if not keys:
            return {}
        found = await conn.fetch(
            "select key, min(seq) as seq from outbox where published_at is null and key = any($1::bytea[]) "
            "and not (event_id = any($2::text[])) group by key", keys, [r["event_id"] for r in rows])
        return {r["key"]: r["seq"] for r in found}

    async def _publish(self, row: asyncpg.Record) -> None:
        stored = _decode_headers(row["headers"])
        headers = [(k, v) for k, v in stored if k not in _TRACE_HEADERS]
        headers.append((EVENT_ID, row["event_id"].encode()))
        with _tracer.start_as_current_span("outbox relay", context=extract_headers(stored),
                                           attributes={"messaging.destination.name": row["topic"],
                                                       "messaging.message.id": row["event_id"]}):
            async with asyncio.timeout(self.publish_timeout_s):
                await self.publisher.publish(row["topic"], bytes(row["value"]), key=row["key"], headers=headers,
                                             content_type=row["content_type"], message_type=row["message_type"])

    async def _prune(self) -> None:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < self.retention_s / 24:
            return
        self._pruned_at = now
        await self.pool.execute("delete from outbox where published_at < now() - make_interval(secs => $1)",
                                self.retention_s)
