"""Helpers for end-to-end delivery tests: a steady producer of valid transactions, counts by event id
on a topic or a table, consumer groups committed to the end, and service processes that can be
killed (by their own pid) and started again.

Everything here talks to real servers; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.kafka import TopicNamer
from loopline_stack import procs
from loopline_stack.services import Running, ServiceSet

log = logging.getLogger(__name__)

CATEGORIES = ("grocery", "travel", "electronics", "fuel", "restaurants")
DEVICES = ("ios", "android", "web")


def transaction(event_id: str, n: int, ts: float | None = None) -> dict[str, Any]:
    """A transaction that meets the ``transactions/v1`` contract; ``n`` spreads it over 50 customers."""
    return {"event_id": event_id, "customer_id": f"c{n % 50}", "merchant_id": f"m{n % 17}",
            "amount": round(5.0 + (n * 7.31) % 400, 2), "currency": "EUR", "country": "DE",
            "merchant_category": CATEGORIES[n % len(CATEGORIES)], "ts": ts if ts is not None else time.time(),
            "device": DEVICES[n % len(DEVICES)]}


def event_ids(run: str, n: int) -> list[str]:
    """``n`` event ids unique to ``run``."""
    return [f"{run}-{i:06d}" for i in range(n)]


@dataclass
class SteadyProducer:
    """Sends one valid transaction per id to ``topic`` at ``rate`` a second, keyed by customer.

    Sends are paced by the clock, not by acknowledgements (a slow broker does not slow the offered
    load); ``acked`` holds the ids the broker acknowledged. With ``retry`` a send that fails (the
    broker is down, a request timed out) is sent again after a pause, until it is acknowledged or
    sends kept failing for ``give_up_s``; without it the first failure raises.
    """

    bootstrap: str
    topic: str
    ids: Sequence[str]
    rate: float
    retry: bool = False
    give_up_s: float = 120.0
    request_timeout_ms: int = 5_000
    max_in_flight: int = 5_000
    acked: list[str] = field(default_factory=list)
    failed_sends: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    _retry: list[int] = field(default_factory=list)
    _failing_since: float | None = None
    _resume_at: float = 0.0
    _error: BaseException | None = None
    _waiting: int = 0

    @property
    def progress(self) -> float:
        return len(self.acked) / max(len(self.ids), 1)

    async def run(self) -> None:
        tick = 0.05
        per_tick = max(1, round(self.rate * tick))
        fresh = iter(range(len(self.ids)))
        in_flight: set[asyncio.Task[None]] = set()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False,
                                    linger_ms=5, request_timeout_ms=self.request_timeout_ms, retry_backoff_ms=200)
        await producer.start()
        self.started_at = time.monotonic()
        exhausted = False
        try:
            while not (exhausted and not self._retry and not in_flight):
                start = time.monotonic()
                if self._error is not None:
                    raise self._error
                if start >= self._resume_at and self._waiting < self.max_in_flight:
                    chunk, self._retry = self._retry[:per_tick], self._retry[per_tick:]
                    while len(chunk) < per_tick and not exhausted:
                        n = next(fresh, None)
                        if n is None:
                            exhausted = True
                        else:
                            chunk.append(n)
                    if chunk:
                        try:
                            futures = [await self._send(producer, n) for n in chunk]
                        except Exception as exc:  # noqa: BLE001 - judged in _failed
                            self._failed(chunk, exc)
                        else:
                            self._waiting += len(chunk)
                            task = asyncio.create_task(self._settle(chunk, futures))
                            in_flight.add(task)
                            task.add_done_callback(in_flight.discard)
                await asyncio.sleep(max(0.0, tick - (time.monotonic() - start)))
        finally:
            self.finished_at = time.monotonic()
            for task in in_flight:
                task.cancel()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, n: int) -> asyncio.Future[Any]:
        txn = transaction(self.ids[n], n)
        fut: asyncio.Future[Any] = await producer.send(self.topic, json.dumps(txn).encode(),
                                                       key=txn["customer_id"].encode(),
                                                       headers=[("content-type", b"application/json")])
        return fut

    async def _settle(self, chunk: list[int], futures: list[asyncio.Future[Any]]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        self._waiting -= len(chunk)
        failed = []
        for n, res in zip(chunk, results, strict=True):
            if isinstance(res, BaseException):
                failed.append((n, res))
            else:
                self.acked.append(self.ids[n])
        if failed:
            self._failed([n for n, _ in failed], failed[0][1])
        else:
            self._failing_since = None

    def _failed(self, chunk: list[int], exc: BaseException) -> None:
        self.failed_sends += len(chunk)
        now = time.monotonic()
        if not self.retry:
            self._error = RuntimeError(f"{len(chunk)} sends failed: {exc!r}")
            return
        self._failing_since = self._failing_since or now
        if now - self._failing_since > self.give_up_s:
            self._error = RuntimeError(f"sends kept failing for {self.give_up_s:.0f}s: {exc!r}")
            return
        log.warning("%d sends failed (%r); sending them again", len(chunk), exc)
        self._retry.extend(chunk)
        self._resume_at = now + 0.5


# ---- reading what arrived --------------------------------------------------------------------------


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        for _ in range(100):
            await c.topics()
            parts = c.partitions_for_topic(topic)
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
            await asyncio.sleep(0.2)
        raise AssertionError(f"topic {topic} has no partitions")
    finally:
        await c.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """The end offset of each partition of ``topic``.

    The local broker (Tansu 0.6) answers ListOffsets(latest) with a value that can trail the log
    by some records; the high-water mark a fetch response carries is exact. Both are read and the
    larger one is taken.
    """
    tps = await partitions(bootstrap, topic)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest")
    await c.start()
    try:
        c.assign(tps)
        listed: dict[TopicPartition, int] = await c.end_offsets(tps)
        await c.seek_to_end(*tps)
        async with asyncio.timeout(30):
            while unknown := [tp for tp in tps if c.highwater(tp) is None]:
                await c.getmany(*unknown, timeout_ms=200)
        return {tp: max(listed[tp], c.highwater(tp) or 0) for tp in tps}
    finally:
        await c.stop()


async def topic_event_ids(bootstrap: str, topic: str, timeout: float = 120.0) -> Counter[str]:
    """How many times each event id appears on ``topic`` (EventIngested envelopes), read from the
    start to its end offsets as of the call, by manual assignment (no consumer group)."""
    out: Counter[str] = Counter()
    async with asyncio.timeout(timeout):
        ends = await end_offsets(bootstrap, topic)
        tps = list(ends)
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=4 * 1024 * 1024)
        await c.start()
        try:
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            while [tp for tp in tps if await c.position(tp) < ends[tp]]:
                for tp, recs in (await c.getmany(*tps, timeout_ms=500, max_records=5000)).items():
                    for r in recs:
                        if r.offset < ends[tp]:
                            out[EventIngested.FromString(r.value or b"").metadata.event_id] += 1
        finally:
            await c.stop()
    return out


async def topic_size(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` (sum of its end offsets; the local broker never deletes)."""
    return sum((await end_offsets(bootstrap, topic)).values())


@dataclass(frozen=True)
class TableCount:
    rows: int
    distinct: int
    ids: frozenset[str]


async def table_event_ids(dsn: str, table: str) -> TableCount:
    """Rows, distinct event ids and the ids themselves in ``table`` (``schema.table``, keyed by event_id)."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("select to_regclass($1)", table):
            return TableCount(0, 0, frozenset())
        rows = await conn.fetchval(f"select count(*) from {table}")  # noqa: S608 - a test's own table name
        ids = [r[0] for r in await conn.fetch(f"select event_id from {table}")]  # noqa: S608
    finally:
        await conn.close()
    return TableCount(int(rows), len(set(ids)), frozenset(ids))


async def table_distinct(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("select to_regclass($1)", table):
            return 0
        return int(await conn.fetchval(f"select count(distinct event_id) from {table}"))  # noqa: S608
    finally:
        await conn.close()


async def committed(bootstrap: str, group: str, topic: str) -> dict[TopicPartition, int]:
    """The offsets ``group`` committed on each partition of ``topic`` (-1 where none)."""
    tps = await partitions(bootstrap, topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # explicit partitions: the local broker does not answer an OffsetFetch for "all"
        done = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    return {tp: done[tp].offset if tp in done else -1 for tp in tps}


async def wait_committed(bootstrap: str, stages: Sequence[tuple[str, str]], timeout: float) -> None:
    """For each ``(group, topic)`` in pipeline order, wait until ``group`` committed ``topic`` up to
    its end offsets (read when the stage before it is settled, so they no longer move)."""
    deadline = time.monotonic() + timeout
    for group, topic in stages:
        lag: dict[TopicPartition, tuple[int, int]] = {}
        while True:
            ends = await end_offsets(bootstrap, topic)
            done = await committed(bootstrap, group, topic)
            lag = {tp: (done.get(tp, -1), end) for tp, end in ends.items() if end > 0 and done.get(tp, -1) < end}
            if not lag:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} did not commit {topic} to its end within {timeout:.0f}s "
                                     f"(committed, end): {lag}")
            await asyncio.sleep(0.5)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 1.0) -> bool:
    """Poll the async ``check`` until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


async def wait_count(count: Callable[[], Awaitable[int]], target: int, timeout: float,
                     stall_s: float = 30.0, interval: float = 1.0) -> int:
    """Poll ``count()`` until it reaches ``target``, stops growing for ``stall_s``, or ``timeout`` passes;
    return the last count (the caller asserts on it, with its own evidence)."""
    deadline = time.monotonic() + timeout
    last, moved = -1, time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            n = await count()
            if n >= target:
                return n
            if n != last:
                last, moved = n, time.monotonic()
        now = time.monotonic()
        if now > deadline or now - moved > stall_s:
            return last
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Tally:
    """What the pipeline's sinks hold, by event id, once it settled (``offline``: the feature service's
    event log, one view: one row per event id)."""

    valid: Counter[str]
    offline: TableCount
    seen: TableCount
    dlq: int

    def describe(self) -> str:
        v = self.valid
        return (f"valid topic {sum(v.values())} records / {len(v)} ids ({sum(v.values()) - len(v)} repeats); "
                f"feature events {self.offline.rows} rows / {self.offline.distinct} ids; seen_events "
                f"{self.seen.rows} rows / {self.seen.distinct} ids; dlq {self.dlq} records")


async def settle(bootstrap: str, dsn: str, namer: TopicNamer, dataset: str, expected: int,
                 timeout: float = 180.0) -> Tally:
    """Wait until the feature event log holds ``expected`` ids (or stops growing), then until ingest, validator
    and feature committed their inputs to the end (nothing is in flight); then count every sink."""
    await wait_count(lambda: table_distinct(dsn, "feature.events"), expected, timeout=timeout)
    await wait_committed(bootstrap, [(namer.group("ingest"), namer.raw(dataset)),
                                     (namer.group("validator"), namer.ingested(dataset)),
                                     (namer.group("feature"), namer.valid(dataset))], timeout=timeout)
    return Tally(await topic_event_ids(bootstrap, namer.valid(dataset)),
                 await table_event_ids(dsn, "feature.events"), await table_event_ids(dsn, "ingest.seen_events"),
                 await topic_size(bootstrap, namer.dlq(dataset)))


def check_once(tally: Tally, expected: set[str], where: str) -> None:
    """Every expected id on the valid topic (at least once) and exactly once in each database sink;
    nothing else anywhere, nothing dead-lettered."""
    valid = set(tally.valid)
    where = f"{where}; {tally.describe()}"
    assert expected <= valid, f"{len(expected - valid)} ids missing from the valid topic, e.g. " \
                              f"{sample(expected - valid)}: {where}"
    assert valid <= expected, f"unknown ids on the valid topic: {sample(valid - expected)}: {where}"
    for name, table in (("feature.events", tally.offline), ("ingest.seen_events", tally.seen)):
        assert table.ids == expected, f"{name} lacks {len(expected - table.ids)} ids, e.g. " \
                                      f"{sample(expected - table.ids)}; unknown {sample(table.ids - expected)}: {where}"
        assert table.rows == table.distinct == len(expected), f"{name} holds an id twice: {where}"
    assert tally.dlq == 0, f"valid events were dead-lettered: {where}"


# ---- service processes ----------------------------------------------------------------------------


def log_entries(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a service log (other lines, such as a traceback, are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def logged(path: Path, message: str) -> list[dict[str, Any]]:
    return [e for e in log_entries(path) if e.get("message") == message]


def metrics_port(path: Path) -> int:
    """The metrics port a service logged in its ``starting`` line."""
    for e in logged(path, "starting"):
        return int(e["metrics_port"])
    raise AssertionError(f"no 'starting' line with metrics_port in {path}")


def readyz(port: int) -> int:
    """The status of ``/readyz`` (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples ``name`` whose labels include ``labels`` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def assignments(path: Path) -> list[frozenset[str]]:
    """The partitions a consumer logged on each ``partitions assigned`` line, in order."""
    return [frozenset(e.get("partitions", ())) for e in logged(path, "partitions assigned")]


def held(path: Path) -> frozenset[str]:
    """The partitions a consumer holds now by its log: its last assignment, unless it revoked them since."""
    last: frozenset[str] = frozenset()
    for e in log_entries(path):
        if e.get("message") == "partitions assigned":
            last = frozenset(str(p) for p in e.get("partitions", ()))
        elif e.get("message") == "partitions revoked":
            last = frozenset()
    return last


@dataclass
class Member:
    """One service process we started."""

    label: str
    name: str
    svc: ServiceSet

    @property
    def proc(self) -> Running:
        return self.svc.running[self.name]

    @property
    def log(self) -> Path:
        return Path(self.proc.log)

    def alive(self) -> bool:
        return procs.ours(self.proc.pid, self.proc.create_time) is not None


@dataclass
class Fleet:
    """Service processes started one at a time, each a :class:`ServiceSet` of one with a log directory of
    its own (so a restarted or extra replica never reads an earlier one's log), stopped by pid."""

    env: dict[str, str]
    log_root: Path
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    gone: list[Member] = field(default_factory=list)
    _started: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, timeout_s: float = 90.0) -> Member:
        """Start one ``name`` process and wait until it consumes."""
        with self._lock:  # replicas may start concurrently (in threads): each gets its own label and log
            label = f"{name}-{self._started[name]}"
            self._started[name] += 1
        svc = ServiceSet(self.env, self.log_root / label, self.extra_env)
        svc.start(names=(name,), timeout_s=timeout_s)
        member = Member(label, name, svc)
        self.members.append(member)
        log.info("started %s (pid %s)", label, member.proc.pid)
        return member

    def stop(self, member: Member, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal ``member`` by its pid; wait up to ``timeout`` (then SIGKILL), reap it."""
        r = member.proc
        procs.stop(r.pid, r.create_time, sig=sig, timeout=timeout)
        self.members.remove(member)
        self.gone.append(member)

    def kill(self, member: Member) -> None:
        self.stop(member, signal.SIGKILL, timeout=10.0)

    def of(self, name: str) -> list[Member]:
        return [m for m in self.members if m.name == name]

    def dead(self) -> list[str]:
        """Members that exited though nobody stopped them, with their last log lines."""
        out = []
        for m in self.members:
            if not m.alive():
                tail = m.log.read_text(errors="replace").strip().splitlines()[-3:]
                out.append(f"{m.label} (pid {m.proc.pid}) exited: {' | '.join(tail)}")
        return out

    def close(self) -> None:
        for m in list(self.members):
            with contextlib.suppress(Exception):
                self.stop(m)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking helper (starting a service, waiting for a pid) without stalling the event loop."""
    return await asyncio.to_thread(fn, *args)


def seeded(env_name: str, default: int | None = None) -> tuple[int, random.Random]:
    """A seed (from ``env_name`` if set, else ``default``, else fresh) and its RNG."""
    raw = os.environ.get(env_name)
    seed = int(raw) if raw else (default if default is not None else random.SystemRandom().randrange(2**31))
    return seed, random.Random(seed)  # noqa: S311 - reproducible test choices, not cryptography


def sample(ids: Iterable[str], n: int = 10) -> list[str]:
    return sorted(ids)[:n]
