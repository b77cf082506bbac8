"""Pipeline benchmark: ingest + validator against a bare aiokafka loop, same broker, same run.

    python -m bench pipeline [--events N] [--rounds K] [--rate R] [--seconds S] [--timeout T]

It starts its own local stack (Tansu, PostgreSQL, SeaweedFS on free ports), a topic prefix and a
database of its own, the ingest and validator services as processes (``ServiceSet``), and the
peer (``bench/bare_loop.py``) as a process. Then, one after the other so they do not share cores:

1. throughput (K rounds, median): N synthetic transactions produced as fast as one aiokafka producer can (keyed by
   customer id) to ``<prefix>.raw.transactions``; timed from the first send until a reader has
   seen every event id on ``<prefix>.valid.transactions``. The same N records, byte for byte, go to
   a copy of the raw topic that the bare loop consumes, and are timed the same way on its output.
2. latency: a fixed offered rate for a few seconds through each; the send time is the payload's
   ``ts`` (epoch seconds), the arrival time is when the reader gets the record; p50/p95/p99.

Both pipelines are warmed up first (group joined, connections open). Everything started here is
stopped by its own pid in ``finally`` (also on Ctrl-C / SIGTERM). Figures go to the terminal
(rich) and to ``bench/results/pipeline-<utc time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, BareProcess, cli, code_under_test, create_database, machine, print_context, terminate

DATASET = "transactions"
PARTITIONS = 3
# The code under test: recorded with the figures, since other work may be uncommitted in the tree.
MEASURED_PATHS = ("services/ingest/src", "services/validator/src", "libs/core/loopline_core")

console = Console(stderr=True)
Extract = Callable[[bytes], tuple[str, float | None]]


# ---- workload ---------------------------------------------------------------------------------


@dataclass
class Event:
    event_id: str
    key: bytes
    record: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(self.record).encode()


class Workload:
    """Valid transactions from the demo's generator, in order; every event id is new."""

    def __init__(self, seed: int) -> None:
        from loopline_cli.demo.synth import TransactionStream  # noqa: PLC0415 - heavy CLI package, bench only

        self.stream = TransactionStream(seed=seed, customers=1000)

    def take(self, n: int) -> list[Event]:
        out = []
        for _ in range(n):
            txn, _label = self.stream.next()
            out.append(Event(txn["event_id"], txn["customer_id"].encode(), txn))
        return out


def extract_platform(value: bytes) -> tuple[str, float | None]:
    """A record on ``valid.<dataset>``: the EventIngested envelope around the original JSON."""
    from loopline.ingest.v1.envelope_pb2 import EventIngested  # noqa: PLC0415

    msg = EventIngested()
    msg.ParseFromString(value)
    ts = json.loads(msg.payload).get("ts")
    return msg.metadata.event_id, float(ts) if isinstance(ts, int | float) else None


def extract_bare(value: bytes) -> tuple[str, float | None]:
    rec = json.loads(value)
    ts = rec.get("ts")
    return str(rec["event_id"]), float(ts) if isinstance(ts, int | float) else None


# ---- the reader: arrival time of every event id on an output topic ------------------------------


class Reader:
    """Reads ``topic`` from the beginning without a group; notes each event id's first arrival."""

    def __init__(self, bootstrap: str, topic: str, extract: Extract | None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.extract = extract
        self.consumer: AIOKafkaConsumer | None = None
        self.arrived: dict[str, tuple[float, float | None]] = {}  # event id -> (arrival, payload ts)
        self.records = 0
        self._waiting: set[str] = set()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, from_end: bool = False) -> None:
        """Start reading; ``from_end`` skips what the topic already holds."""
        # The reader is the stopwatch: it asks the broker not to hold its fetches (default 500 ms).
        self.consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id=None,
                                         client_id="bench-reader", enable_auto_commit=False,
                                         auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await self.consumer.start()
        if from_end:
            deadline = time.monotonic() + 30
            while not self.consumer.assignment():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reader got no partitions of {self.topic}")
                await asyncio.sleep(0.05)
            parts = list(self.consumer.assignment())
            await self.consumer.seek_to_end(*parts)
            for tp in parts:
                await self.consumer.position(tp)  # resolve now, before anything new is sent
        self._task = asyncio.create_task(self._run(), name=f"reader {self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was raised in wait_all
                await self._task
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time()
            for records in batches.values():
                self.records += len(records)
                if self.extract is None:
                    continue
                for rec in records:
                    event_id, ts = self.extract(rec.value)
                    if event_id not in self.arrived:
                        self.arrived[event_id] = (now, ts)
                        if event_id in self._waiting:
                            self._waiting.discard(event_id)
                            if not self._waiting:
                                self._done.set()

    async def wait_all(self, ids: Sequence[str], wait_s: float) -> bool:
        """True once every id in ``ids`` has arrived; False after ``wait_s`` seconds.

        Every second it runs :data:`alive_check`, which raises when a process under test died.
        """
        self._waiting = {i for i in ids if i not in self.arrived}
        self._done.clear()
        deadline = time.monotonic() + wait_s
        while self._waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), min(1.0, left))
            if self._task is not None and self._task.done():
                self._task.result()  # the reader failed: raise its error here
                raise RuntimeError(f"reader of {self.topic} stopped")
            alive_check()
        return True


def _nothing_to_check() -> None:
    return None


alive_check: Callable[[], None] = _nothing_to_check
"""Raises when a process under test has died; set by :func:`run` once they are started."""


# ---- producing ----------------------------------------------------------------------------------


async def blast(producer: AIOKafkaProducer, topic: str, events: Sequence[Event]) -> float:
    """Send ``events`` as fast as the producer takes them; return the wall time of the first send."""
    values = [(e.key, e.encode()) for e in events]  # encoded before the clock starts
    started = time.time()
    pending = [await producer.send(topic, value, key=key) for key, value in values]
    await asyncio.gather(*pending)
    return started


@dataclass
class Offered:
    ids: list[str]
    started: float
    send_seconds: float
    behind_s: float  # how far the sender fell behind its schedule at worst

    @property
    def rate(self) -> float:
        return len(self.ids) / self.send_seconds if self.send_seconds > 0 else 0.0


async def offer(producer: AIOKafkaProducer, topic: str, events: Sequence[Event], rate: float) -> Offered:
    """Send ``events`` at ``rate`` per second on a fixed schedule; each payload's ts is its send time."""
    t0 = time.monotonic()
    started = time.time()
    pending = []
    behind = 0.0
    i = 0
    while i < len(events):
        now = time.monotonic()
        behind = max(behind, now - (t0 + i / rate))
        due = min(len(events), int((now - t0) * rate) + 1)
        while i < due:
            ev = events[i]
            ev.record["ts"] = time.time()
            pending.append(await producer.send(topic, ev.encode(), key=ev.key))
            i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    await asyncio.gather(*pending)
    return Offered([e.event_id for e in events], started, time.monotonic() - t0, max(0.0, behind))


# ---- the two pipelines --------------------------------------------------------------------------


@dataclass
class Pipeline:
    name: str
    source: str
    reader: Reader
    dlq: Reader | None = None


@dataclass
class Throughput:
    events: int
    delivered: int
    seconds: float
    complete: bool

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "delivered": self.delivered, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.rate, 1), "complete": self.complete}


@dataclass
class Latency:
    offered: Offered
    target_rate: float
    latencies_ms: list[float] = field(default_factory=list)
    delivered_seconds: float = 0.0  # first arrival to last arrival

    @property
    def missing(self) -> int:
        return len(self.offered.ids) - len(self.latencies_ms)

    def pct(self, p: float) -> float | None:
        if not self.latencies_ms:
            return None
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]

    def growth_ms(self) -> float | None:
        """Median latency of the last tenth of the events sent minus that of the first tenth."""
        if len(self.latencies_ms) < 20:
            return None
        tenth = len(self.latencies_ms) // 10
        return statistics.median(self.latencies_ms[-tenth:]) - statistics.median(self.latencies_ms[:tenth])

    @property
    def delivered_rate(self) -> float:
        return len(self.latencies_ms) / self.delivered_seconds if self.delivered_seconds > 0 else 0.0

    def notes(self) -> list[str]:
        out = []
        if self.offered.rate < 0.95 * self.target_rate:
            out.append(f"offered rate not held: {self.offered.rate:,.0f}/s of {self.target_rate:,.0f}/s "
                       f"(sender fell up to {self.offered.behind_s:.2f}s behind)")
        growth = self.growth_ms()
        if growth is not None and growth > 500:
            out.append(f"pipeline did not keep up: latency grew by {growth / 1000:,.1f}s from the first to the "
                       f"last tenth of the run ({self.delivered_rate:,.0f}/s delivered); the percentiles measure "
                       "the backlog")
        if self.missing:
            out.append(f"{self.missing} events had not arrived at the timeout: percentiles are lower bounds")
        return out

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        return {"target_rate": self.target_rate, "offered": len(self.offered.ids),
                "offered_rate": round(self.offered.rate, 1), "send_seconds": round(self.offered.send_seconds, 3),
                "sender_behind_s": round(self.offered.behind_s, 3), "delivered": len(self.latencies_ms),
                "delivered_rate": round(self.delivered_rate, 1), "missing": self.missing,
                "p50_ms": r(self.pct(50)), "p95_ms": r(self.pct(95)), "p99_ms": r(self.pct(99)),
                "max_ms": r(max(self.latencies_ms) if self.latencies_ms else None),
                "latency_growth_ms": r(self.growth_ms()), "notes": self.notes()}


async def measure_throughput(producer: AIOKafkaProducer, pipe: Pipeline, events: Sequence[Event],
                             wait_s: float) -> Throughput:
    console.print(f"[bold]{pipe.name}[/]: throughput, {len(events):,} events ...")
    started = await blast(producer, pipe.source, events)
    ids = [e.event_id for e in events]
    complete = await pipe.reader.wait_all(ids, wait_s)
    arrivals = [pipe.reader.arrived[i][0] for i in ids if i in pipe.reader.arrived]
    end = max(arrivals) if complete else time.time()
    result = Throughput(len(events), len(arrivals), end - started, complete)
    console.print(f"  {result.delivered:,}/{result.events:,} in {result.seconds:.2f}s = {result.rate:,.0f} events/s"
                  + ("" if complete else f" [red](timed out after {wait_s:.0f}s)[/]"))
    return result


def summarise(runs: Sequence[Throughput]) -> dict[str, Any]:
    rates = [r.rate for r in runs]
    return {"events_per_s_median": round(statistics.median(rates), 1), "events_per_s_min": round(min(rates), 1),
            "events_per_s_max": round(max(rates), 1), "complete": all(r.complete for r in runs),
            "rounds": [r.as_dict() for r in runs]}


async def measure_latency(producer: AIOKafkaProducer, pipe: Pipeline, events: Sequence[Event], rate: float,
                          wait_s: float) -> Latency:
    console.print(f"[bold]{pipe.name}[/]: latency, {rate:,.0f}/s offered for {len(events) / rate:.0f}s ...")
    offered = await offer(producer, pipe.source, events, rate)
    await pipe.reader.wait_all(offered.ids, wait_s)
    lat = latency_seen_by(pipe.reader, offered, rate)
    console.print(f"  offered {offered.rate:,.0f}/s, p50 {lat.pct(50) or 0:.1f} ms, p99 {lat.pct(99) or 0:.1f} ms")
    for note in lat.notes():
        console.print(f"  [yellow]{note}[/]")
    return lat


def latency_seen_by(reader: Reader, offered: Offered, rate: float) -> Latency:
    lat = Latency(offered, rate)
    arrivals = []
    for i in offered.ids:
        hit = reader.arrived.get(i)
        if hit is None:
            continue
        arrival, sent = hit
        if sent is None:
            continue
        lat.latencies_ms.append((arrival - sent) * 1000)
        arrivals.append(arrival)
    if len(arrivals) > 1:
        lat.delivered_seconds = max(arrivals) - min(arrivals)
    return lat


async def warm_up(producer: AIOKafkaProducer, pipes: Sequence[Pipeline], workload: Workload, n: int,
                  wait_s: float) -> None:
    """Push a few records through each pipeline so groups are joined and connections open."""
    for pipe in pipes:
        events = workload.take(n)
        await blast(producer, pipe.source, events)
        if not await pipe.reader.wait_all([e.event_id for e in events], wait_s):
            got = sum(e.event_id in pipe.reader.arrived for e in events)
            dlq = f", {pipe.dlq.records} on its dead-letter topic" if pipe.dlq else ""
            raise RuntimeError(f"{pipe.name}: only {got}/{n} warm-up events came through in {wait_s:.0f}s{dlq}")
        console.print(f"{pipe.name}: warmed up ({n} events)")


# ---- orchestration ------------------------------------------------------------------------------



async def run_benchmarks(args: argparse.Namespace, env: dict[str, str], prefix: str) -> dict[str, Any]:
    with sigterm_cancels_this_task():
        return await _run_benchmarks(args, env, prefix)


async def _run_benchmarks(args: argparse.Namespace, env: dict[str, str], prefix: str) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer  # noqa: PLC0415

    bootstrap = env["LOOPLINE_KAFKA_BOOTSTRAP"]
    namer = TopicNamer(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bench-producer", acks="all", linger_ms=5,
                                enable_idempotence=False)
    platform_pipe = Pipeline("platform", namer.raw(DATASET), Reader(bootstrap, namer.valid(DATASET),
                                                                    extract_platform),
                             Reader(bootstrap, namer.dlq(DATASET), None))
    bare_pipe = Pipeline("bare", f"{prefix}.bench.bare-in", Reader(bootstrap, f"{prefix}.bench.bare-out",
                                                                   extract_bare))
    # The floor: the bare loop's input read straight back (producer -> broker -> reader, no pipeline).
    floor = Reader(bootstrap, bare_pipe.source, extract_bare)
    readers = [r for p in (platform_pipe, bare_pipe) for r in (p.reader, p.dlq) if r is not None]
    await producer.start()
    try:
        for r in readers:
            await r.start()
        workload = Workload(args.seed)
        await warm_up(producer, [platform_pipe, bare_pipe], workload, args.warmup, min(120.0, args.timeout))

        # 1. Throughput: the same records, byte for byte, through each pipeline in turn; a few rounds,
        #    because two cores shared with everything else on the machine make single runs noisy.
        tp_platform: list[Throughput] = []
        tp_bare: list[Throughput] = []
        for k in range(args.rounds):
            console.print(f"throughput round {k + 1}/{args.rounds}")
            events = workload.take(args.events)
            tp_platform.append(await measure_throughput(producer, platform_pipe, events, args.timeout))
            tp_bare.append(await measure_throughput(producer, bare_pipe, events, args.timeout))

        # 2. Latency at a fixed offered rate.
        n = max(1, round(args.rate * args.seconds))
        lat_platform = await measure_latency(producer, platform_pipe, workload.take(n), args.rate, args.timeout)
        # Started only now, so that it reads nothing while the bare loop's throughput is measured.
        readers.append(floor)
        await floor.start(from_end=True)
        lat_bare = await measure_latency(producer, bare_pipe, workload.take(n), args.rate, args.timeout)
        await floor.wait_all(lat_bare.offered.ids, 30.0)
        lat_floor = latency_seen_by(floor, lat_bare.offered, args.rate)
        assert platform_pipe.dlq is not None
        dead_lettered = platform_pipe.dlq.records
    finally:
        for r in readers:
            await r.stop()
        await producer.stop()
    platform_tp, bare_tp = summarise(tp_platform), summarise(tp_bare)
    bare_median = bare_tp["events_per_s_median"]
    ratio = platform_tp["events_per_s_median"] / bare_median if bare_median else None
    per_round = [round(p.rate / b.rate, 4) if b.rate else None for p, b in zip(tp_platform, tp_bare, strict=True)]
    return {"throughput": {"platform": platform_tp, "bare": bare_tp,
                           "ratio_platform_over_bare": None if ratio is None else round(ratio, 4),
                           "ratio_per_round": per_round},
            "latency": {"platform": lat_platform.as_dict(), "bare": lat_bare.as_dict(),
                        "floor": lat_floor.as_dict()},
            "platform_dead_lettered": dead_lettered}





def run(args: argparse.Namespace) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415
    from loopline_stack.stack import Stack, StackConfig  # noqa: PLC0415

    code = code_under_test(MEASURED_PATHS)  # before the run: this is the code the services start from
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        console.print(f"[yellow]the machine is busy (load {load_before[0]:.1f} on {os.cpu_count()} cores): "
                      "absolute rates will be low and noisy; the ratio, measured in alternating rounds, less so[/]")
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    work = ROOT / ".loopline" / f"bench-{run_id}"
    stack = Stack(StackConfig(state_dir=work / "stack", timeout_s=90), progress=lambda m: console.print(f"  {m}"))
    console.print(f"[bold]pipeline benchmark[/] (logs in {work / 'logs'})")
    state = stack.up()
    services: ServiceSet | None = None
    bare: BareProcess | None = None
    try:
        suffix = uuid.uuid4().hex[:10]
        prefix = f"b{suffix}"
        bootstrap = state.env["LOOPLINE_KAFKA_BOOTSTRAP"]
        topics = [*TopicNamer(prefix).platform_topics(), f"{prefix}.bench.bare-in", f"{prefix}.bench.bare-out"]
        asyncio.run(ensure_topics(bootstrap, topics, partitions=PARTITIONS))
        dsn = asyncio.run(create_database(state.env["LOOPLINE_POSTGRES_DSN"], f"b_{suffix}"))
        env = {**state.env, "LOOPLINE_POSTGRES_DSN": dsn, "LOOPLINE_TOPIC_PREFIX": prefix}
        services = ServiceSet(env, work / "logs")
        services.start(progress=lambda m: console.print(f"  {m}"), names=("ingest", "validator"))
        bare = BareProcess("bench.bare_loop", [bootstrap, f"{prefix}.bench.bare-in", f"{prefix}.bench.bare-out",
                                                f"{prefix}.bare"],
                           work / "logs" / "bare.log")
        bare.start()
        global alive_check  # noqa: PLW0603 - one run per process; the readers poll it while waiting

        def check(svc: ServiceSet = services, peer: BareProcess = bare) -> None:
            dead = [name for name, ok in svc.alive().items() if not ok]
            if dead:
                tails = {n: svc.running[n].log.read_text(errors="replace").strip().splitlines()[-1:] for n in dead}
                raise RuntimeError(f"{', '.join(dead)} exited during the run: {tails}; logs in {work / 'logs'}")
            peer.check()

        alive_check = check
        figures = asyncio.run(run_benchmarks(args, env, prefix))
        check()
    finally:
        alive_check = _nothing_to_check
        if bare is not None:
            bare.stop()
        if services is not None:
            services.stop()
        stack.down()
    return {"benchmark": "pipeline", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "code": code,
            "params": {"events": args.events, "rounds": args.rounds, "rate": args.rate, "seconds": args.seconds,
                       "warmup": args.warmup, "partitions": PARTITIONS, "seed": args.seed, "timeout_s": args.timeout},
            "machine": machine(load_before),
            "method": "same broker, same records; pipelines measured one after the other (not concurrently); "
                      "producer and readers in the bench process; platform = ingest + validator processes "
                      "(Postgres dedupe); bare = one aiokafka process getmany->loads->dumps->produce->commit "
                      "with the bus's client settings; floor = producer -> broker -> reader, no pipeline",
            **figures}


# ---- output -------------------------------------------------------------------------------------


def show(result: dict[str, Any]) -> None:
    tp = result["throughput"]
    params = result["params"]
    table = Table(title=f"pipeline throughput: {params['events']:,} events x {params['rounds']} rounds, "
                        f"commit {result['code']['commit']}")
    for col in ("", "events/s (median)", "min", "max", "per round", "complete"):
        table.add_column(col, justify="right" if col else "left")
    for name in ("platform", "bare"):
        row = tp[name]
        rounds = " ".join(f"{r['events_per_s']:,.0f}" for r in row["rounds"])
        table.add_row(name, f"{row['events_per_s_median']:,.0f}", f"{row['events_per_s_min']:,.0f}",
                      f"{row['events_per_s_max']:,.0f}", rounds, "yes" if row["complete"] else "[red]timed out[/]")
    ratio = tp["ratio_platform_over_bare"]
    table.add_row("[bold]platform / bare[/]", "n/a" if ratio is None else f"[bold]{ratio:.3f}[/]", "", "",
                  " ".join("n/a" if r is None else f"{r:.2f}" for r in tp["ratio_per_round"]), "")
    out = Console(width=None if sys.stdout.isatty() else 120)
    out.print(table)

    lat = result["latency"]
    table = Table(title=f"latency produce -> output topic at {result['params']['rate']:,.0f}/s offered, "
                        f"~{result['params']['seconds']:g}s")
    for col in ("", "p50 ms", "p95 ms", "p99 ms", "max ms", "offered/s", "delivered/s", "missing"):
        table.add_column(col, justify="right" if col else "left")

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:,.1f}"

    for name in ("platform", "bare", "floor"):
        row = lat[name]
        table.add_row(name, ms(row["p50_ms"]), ms(row["p95_ms"]), ms(row["p99_ms"]), ms(row["max_ms"]),
                      f"{row['offered_rate']:,.0f}", f"{row['delivered_rate']:,.0f}", str(row["missing"]))
    out.print(table)
    out.print("floor: the bare run's records read straight off its input topic (producer -> broker -> reader)")
    for name in ("platform", "bare"):
        for note in lat[name]["notes"]:
            out.print(f"[yellow]{name}: {note}[/]")
    print_context(out, result)





def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="records for the throughput run (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per pipeline; the median is reported")
    p.add_argument("--rate", type=float, default=2_000.0, help="offered events/s for the latency run (default 2000)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the latency run (default 10)")
    p.add_argument("--warmup", type=int, default=200, help="records through each pipeline before timing")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for a phase's records to arrive (default 600)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("--events, --rounds, --rate and --seconds must be positive")
    return args





@contextlib.contextmanager
def sigterm_cancels_this_task() -> Iterator[None]:
    """Inside the event loop, SIGTERM cancels the running task (as asyncio.run does for Ctrl-C), so
    its finally blocks close the clients; afterwards SIGTERM raises KeyboardInterrupt again."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # this leaves SIG_DFL behind
        signal.signal(signal.SIGTERM, terminate)


def main(argv: Sequence[str] | None = None) -> None:
    cli("pipeline", parse_args(argv), run, show, console)


if __name__ == "__main__":
    main()
