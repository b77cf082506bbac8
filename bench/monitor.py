"""Monitor benchmark: the monitor's sustained intake of predictions against a bare aiokafka loop, same data,
same run.

    python -m bench monitor [--predictions 20000] [--rounds 2] [--windows '["count:500/100"]'] [--report-every N]

It starts its own local stack (Tansu, PostgreSQL, SeaweedFS on free ports), a topic prefix and a database of
its own, the registry as a process, and registers a signed fraud model whose reference profile is built from
3,000 synthetic transactions. Then per round, each side one after the other so they do not share cores:

1. N ``PredictionLogged`` rows of that version (inputs from the reference's own distribution, the model's own
   scores: no drift) are published with ``publish_batch`` to ``<prefix>.predictions.fraud`` before either
   consumer runs;
2. ``monitor``: the monitor service as its own process (its defaults unless the options above say otherwise:
   Postgres dedupe of every row, incremental drift windows, an evaluation per step, ``WindowEvaluated`` through
   the outbox, Evidently's report every Nth evaluation), stopped after the round (the next round's start
   rebuilds its windows from Postgres, as after any restart);
3. ``bare``: ``bench/monitor_bare.py``, one aiokafka process: ``getmany(500)`` -> ``PredictionLogged.FromString``
   -> commit, on the same records. It takes a fraction of a second for 20,000, too short to time by polling
   offsets, so its sustained figure comes from the time it logs after each commit (same definition); the
   polled offsets still say when it was complete.

Each side is timed by its consumer group's committed offsets, polled from this process (5 to 100 ms apart,
about 100 polls over what has run): sustained intake = rows committed after the first commit seen / time from
that commit to the last (process start, group join and the first batch excluded; the monitor's first batch
also loads and verifies the signed reference); ``from start`` = all rows / time from spawning the process.
The sides take turns going first. After each monitor round its ``/metrics`` are read
(``loopline_monitor_evaluation_seconds``: mean cost of one window evaluation; predictions by outcome; batch
time) and the evaluations and alerts it published are counted (the data does not drift: an alert is a false
alarm). Everything started is stopped by its own pid in ``finally`` (also on Ctrl-C / SIGTERM). Figures go
to the terminal and to ``bench/results/monitor-<utc time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from loopline_core.auth import client_env
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, BareProcess, cli, code_under_test, create_database, machine, print_context
from bench.pipeline import sigterm_cancels_this_task

MODEL = "fraud"
PARTITIONS = 3
POLL_MIN_S, POLL_MAX_S = 0.005, 0.1
MEASURED_PATHS = ("services/monitor/src", "libs/core/loopline_core", "libs/ml/loopline_ml", "bench/monitor.py",
                  "bench/monitor_bare.py")
console = Console(stderr=True)
Offsets = dict[TopicPartition, int]


# ---- workload ---------------------------------------------------------------------------------


class Feed:
    """Predictions of one version as inference logs them: the reference's distribution, the model's scores."""

    def __init__(self, version: int, seed: int) -> None:
        from loopline_testing.builders import make_model  # noqa: PLC0415

        self.version = version
        self.rng = np.random.default_rng(seed)
        self.model = make_model(0)  # the model register_signed_model signs: its profile holds these scores
        self.sent = 0
        self.t0 = time.time() - 3600

    def take(self, n: int) -> list[tuple[str, bytes]]:
        """``n`` new rows as (key, encoded PredictionLogged); encoded before any clock starts."""
        from loopline.inference.v1.events_pb2 import PredictionLogged  # noqa: PLC0415
        from loopline_core.events import metadata  # noqa: PLC0415
        from loopline_testing.builders import FEATURES, transactions  # noqa: PLC0415

        x = transactions(n, self.rng)
        scores = self.model.predict(x.astype(np.float32)).ravel()
        out = []
        for row, score in zip(x, scores, strict=True):
            i = self.sent
            rid = f"r{i}"
            p = PredictionLogged(metadata=metadata("bench", f"p{i}", occurred_at=self.t0 + i * 0.01),
                                 model_name=MODEL, model_version=self.version, request_id=rid, feature_names=FEATURES,
                                 inputs=row.tolist(), outputs=[float(score)], latency_ms=2.0, role="champion",
                                 variant="torch")
            out.append((rid, p.SerializeToString()))
            self.sent += 1
        return out


async def publish(bootstrap: str, topic: str, rows: list[tuple[str, bytes]]) -> float:
    """Publish ``rows`` in batches; the seconds it took."""
    from loopline.inference.v1.events_pb2 import PredictionLogged  # noqa: PLC0415
    from loopline_core.kafka import Publisher  # noqa: PLC0415

    pub = Publisher(bootstrap, client_id="bench-feed")
    await pub.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), 5000):
            await pub.publish_batch(topic, rows[i:i + 5000], message_type=PredictionLogged.DESCRIPTOR.full_name)
        return time.perf_counter() - started
    finally:
        await pub.stop()


# ---- offsets: the stopwatch -------------------------------------------------------------------


async def log_ends(bootstrap: str, topic: str) -> Offsets:
    from loopline_core.kafka.offsets import log_end  # noqa: PLC0415

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        await c.topics()
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        if not tps:
            raise RuntimeError(f"{topic} has no partitions")
        ends: Offsets = await log_end(c, tps)
        return ends
    finally:
        await c.stop()


@dataclass
class Intake:
    side: str
    rows: int
    committed: int
    spawn_to_first_s: float | None
    first_seen: int  # rows already committed at the first commit seen
    sustained_s: float  # first commit seen -> last
    total_s: float  # spawn -> last
    complete: bool
    trace: list[tuple[float, int]]  # (seconds since the first commit seen, rows committed), about one a second

    @property
    def sustained_rate(self) -> float | None:
        n = self.committed - self.first_seen
        return n / self.sustained_s if self.sustained_s > 0 and n > 0 else None

    @property
    def total_rate(self) -> float | None:
        return self.committed / self.total_s if self.total_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None, d: int = 1) -> float | None:
            return None if x is None else round(x, d)

        return {"side": self.side, "rows": self.rows, "committed": self.committed, "complete": self.complete,
                "spawn_to_first_commit_s": r(self.spawn_to_first_s, 3), "rows_at_first_commit": self.first_seen,
                "sustained_s": round(self.sustained_s, 3), "total_s": round(self.total_s, 3),
                "sustained_per_s": r(self.sustained_rate), "from_start_per_s": r(self.total_rate),
                "trace": [[round(t, 2), n] for t, n in self.trace]}


async def watch_commits(bootstrap: str, group: str, base: Offsets, ends: Offsets, spawned: float, limit_s: float,
                        side: str, alive: Callable[[], None]) -> Intake:
    """Poll ``group``'s committed offsets until they reach ``ends``; rows counted beyond ``base``."""
    tps = list(ends)
    total = sum(ends[tp] - base[tp] for tp in tps)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    first: tuple[float, int] | None = None
    n, now, checked = 0, spawned, spawned
    trace: list[tuple[float, int]] = []
    try:
        while n < total and now - spawned < limit_s:
            # about 100 polls over what has run so far: fine for a side that takes a tenth of a second,
            # light on the cores for one that takes a minute
            await asyncio.sleep(min(POLL_MAX_S, max(POLL_MIN_S, (now - (first[0] if first else spawned)) / 100)))
            # explicit partitions: the local broker does not answer an OffsetFetch for "all"
            done = await admin.list_consumer_group_offsets(group, partitions=tps)
            now = time.perf_counter()
            n = sum(max(0, done[tp].offset - base[tp]) for tp in tps if tp in done)
            if n and first is None:
                first = (now, n)
            if first is not None and (not trace or now - first[0] - trace[-1][0] >= 1.0 or n >= total):
                trace.append((now - first[0], n))
            if now - checked > 1.0:
                alive()
                checked = now
    finally:
        await admin.close()
    t1, n1 = first if first is not None else (now, n)
    return Intake(side, total, n, None if first is None else t1 - spawned, n1, now - t1, now - spawned, n >= total,
                  trace)


# ---- the two consumers ------------------------------------------------------------------------


def scrape(port: int) -> dict[str, Any]:
    """The monitor's own figures from its /metrics: evaluation cost, predictions by outcome, batches."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    outcomes: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "loopline_monitor_predictions_total":
                outcomes[s.labels["outcome"]] = outcomes.get(s.labels["outcome"], 0) + s.value
            elif s.name in ("loopline_monitor_evaluation_seconds_sum", "loopline_monitor_evaluation_seconds_count",
                            "loopline_bus_batch_seconds_sum", "loopline_bus_batch_seconds_count") and \
                    s.labels.get("model", MODEL) == MODEL and ".predictions." in s.labels.get("topic", ".predictions."):
                values[s.name] = values.get(s.name, 0.0) + s.value
            elif s.name == "loopline_monitor_alerts_total":
                values["alerts"] = values.get("alerts", 0.0) + s.value

    def mean_ms(prefix: str) -> float | None:
        count = values.get(f"{prefix}_count", 0.0)
        return round(1000 * values[f"{prefix}_sum"] / count, 3) if count else None

    return {"evaluations": int(values.get("loopline_monitor_evaluation_seconds_count", 0)),
            "evaluation_ms_mean": mean_ms("loopline_monitor_evaluation_seconds"),
            "evaluation_s_total": round(values.get("loopline_monitor_evaluation_seconds_sum", 0.0), 3),
            "batches": int(values.get("loopline_bus_batch_seconds_count", 0)),
            "batch_ms_mean": mean_ms("loopline_bus_batch_seconds"),
            "predictions_by_outcome": {k: int(v) for k, v in sorted(outcomes.items())},
            "alerts_raised": int(values.get("alerts", 0))}


async def published(bootstrap: str, prefix: str) -> tuple[dict[str, int], list[str]]:
    """What the monitor has published so far: records by type (and how many windows crossed a check, and how many
    carry Evidently's report), and each alert raised in one line."""
    from loopline.monitor.v1.events_pb2 import AlertRaised, WindowEvaluated  # noqa: PLC0415
    from loopline_core.kafka import TopicNamer  # noqa: PLC0415
    from loopline_core.kafka.records import MESSAGE_TYPE  # noqa: PLC0415
    from loopline_testing.builders import quiet  # noqa: PLC0415

    namer = TopicNamer(prefix)
    out: dict[str, int] = {}
    alerts = []
    for topic in (namer.evaluations(), namer.alerts(), namer.dead_letter_for(namer.predictions(MODEL))):
        for r in await quiet(bootstrap, topic, 0, wait_s=0):
            kind = "dead_lettered" if topic.endswith(".dlq") else (r.header(MESSAGE_TYPE) or "?").rsplit(".", 1)[-1]
            out[kind] = out.get(kind, 0) + 1
            if kind == "WindowEvaluated":
                w = WindowEvaluated.FromString(r.value)
                for name, flag in (("windows_crossed", bool(w.crossed)), ("windows_with_report", bool(w.report_uri))):
                    out[name] = out.get(name, 0) + flag
            if kind == "AlertRaised":
                a = AlertRaised.FromString(r.value)
                alerts.append(f"{a.kind}/{a.severity} {a.metric}={a.value:.4g} (threshold {a.threshold:.4g}) "
                              f"v{a.model_version} {a.window}: {a.summary}")
    return out, alerts


# ---- orchestration ----------------------------------------------------------------------------


@dataclass
class Setup:
    env: dict[str, str]
    prefix: str
    registry: str
    work: Path
    monitor_env: dict[str, str]
    alive: Callable[[], None]


async def run_monitor(s: Setup, k: int, base: Offsets, ends: Offsets, limit_s: float) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer  # noqa: PLC0415
    from loopline_stack import procs  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415

    port = procs.free_port()
    mon = ServiceSet(s.env, s.work / "logs" / f"monitor-{k}", {"monitor": {
        **s.monitor_env, "LOOPLINE_REGISTRY_ADDR": s.registry, "LOOPLINE_METRICS_PORT": str(port)}})
    before, before_alerts = await published(s.env["LOOPLINE_KAFKA_BOOTSTRAP"], s.prefix)
    spawned = time.perf_counter()
    starting = asyncio.create_task(asyncio.to_thread(mon.start, names=("monitor",), timeout_s=limit_s))

    def alive() -> None:
        s.alive()
        if starting.done():
            starting.result()  # a start that failed raises here
            if not all(mon.alive().values()):
                raise RuntimeError(f"the monitor exited during the run; see {mon.log_dir / 'monitor.log'}")

    try:
        intake = await watch_commits(s.env["LOOPLINE_KAFKA_BOOTSTRAP"], TopicNamer(s.prefix).group("monitor"),
                                     base, ends, spawned, limit_s, "monitor", alive)
        await starting
        figures = await asyncio.to_thread(scrape, port)
    finally:
        await asyncio.wait([starting])  # a start in its thread cannot be cancelled: let it end, then stop
        await asyncio.to_thread(mon.stop)
    after, alerts = await published(s.env["LOOPLINE_KAFKA_BOOTSTRAP"], s.prefix)
    figures["published"] = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
    figures["alerts"] = alerts[len(before_alerts):]
    return {**intake.as_dict(), "monitor": figures}


async def run_bare(s: Setup, k: int, base: Offsets, ends: Offsets, limit_s: float) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer  # noqa: PLC0415

    namer = TopicNamer(s.prefix)
    bare = BareProcess("bench.monitor_bare", [s.env["LOOPLINE_KAFKA_BOOTSTRAP"], namer.predictions(MODEL),
                                              namer.group("monitor-bare")], s.work / "logs" / f"bare-{k}.log")
    spawned = time.perf_counter()
    bare.start()

    def alive() -> None:
        s.alive()
        bare.check()

    try:
        intake = await watch_commits(s.env["LOOPLINE_KAFKA_BOOTSTRAP"], namer.group("monitor-bare"), base, ends,
                                     spawned, limit_s, "bare", alive)
    finally:
        await asyncio.to_thread(bare.stop)
    return {**intake.as_dict(), **own_stopwatch(bare.log, intake.committed)}


def own_stopwatch(log: Path, rows: int) -> dict[str, Any]:
    """The bare loop's sustained intake from its own ``committed <epoch s> <n>`` lines: it takes a fraction of a
    second, within a few polls, so its rows after the first commit / first commit to last are timed inside it."""
    commits = [(float(t), int(n)) for line in log.read_text(errors="replace").splitlines()
               if line.startswith("committed ") for _, t, n in [line.split()]]
    if len(commits) < 2 or commits[-1][1] < rows:
        return {"sustained_timed_by": "committed offsets polled (its own lines were incomplete)"}
    (t1, n1), (t2, n2) = commits[0], commits[-1]
    return {"sustained_timed_by": "its own commit lines", "rows_at_first_commit": n1,
            "sustained_s": round(t2 - t1, 4), "sustained_per_s": round((n2 - n1) / (t2 - t1), 1) if t2 > t1 else None,
            "commits": len(commits), "trace": [[round(t - t1, 4), n] for t, n in commits]}


async def rounds(args: argparse.Namespace, s: Setup) -> dict[str, Any]:
    with sigterm_cancels_this_task():
        return await _rounds(args, s)


async def _rounds(args: argparse.Namespace, s: Setup) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer  # noqa: PLC0415
    from loopline_testing.builders import register_signed_model, transactions  # noqa: PLC0415

    bootstrap = s.env["LOOPLINE_KAFKA_BOOTSTRAP"]
    topic = TopicNamer(s.prefix).predictions(MODEL)
    v = await register_signed_model(s.env, s.registry, MODEL,
                                    reference_x=transactions(3000, np.random.default_rng(args.seed)))
    feed = Feed(v.version, args.seed + 1)
    out: list[dict[str, Any]] = []
    base = await log_ends(bootstrap, topic)
    for k in range(args.rounds):
        rows = feed.take(args.predictions)
        publish_s = await publish(bootstrap, topic, rows)
        ends = await log_ends(bootstrap, topic)
        if sum(ends.values()) - sum(base.values()) != len(rows):
            raise RuntimeError(f"published {len(rows)} rows but the topic grew by "
                               f"{sum(ends.values()) - sum(base.values())}")
        console.print(f"round {k + 1}/{args.rounds}: {len(rows):,} predictions published in {publish_s:.1f}s")
        sides = [("monitor", run_monitor), ("bare", run_bare)]
        result: dict[str, Any] = {"round": k + 1, "publish_s": round(publish_s, 3),
                                  "order": [name for name, _ in (sides if k % 2 == 0 else sides[::-1])]}
        for name, side in sides if k % 2 == 0 else sides[::-1]:
            result[name] = await side(s, k + 1, base, ends, args.timeout)
            r = result[name]
            console.print(f"  {name}: {r['sustained_per_s'] or 0:,.0f}/s sustained, "
                          f"{r['from_start_per_s'] or 0:,.0f}/s from start"
                          + ("" if r["complete"] else " [red](timed out)[/]"))
        out.append(result)
        base = ends
    return {"model_version": v.version, "rounds": out}


def summarise(rounds_: list[dict[str, Any]]) -> dict[str, Any]:
    def med(side: str, key: str) -> float | None:
        xs = [r[side][key] for r in rounds_ if r[side][key] is not None]
        return round(statistics.median(xs), 1) if xs else None

    out: dict[str, Any] = {}
    for side in ("monitor", "bare"):
        out[side] = {"sustained_per_s_median": med(side, "sustained_per_s"),
                     "from_start_per_s_median": med(side, "from_start_per_s"),
                     "complete": all(r[side]["complete"] for r in rounds_)}
    m, b = out["monitor"]["sustained_per_s_median"], out["bare"]["sustained_per_s_median"]
    out["ratio_monitor_over_bare"] = round(m / b, 4) if m and b else None
    out["ratio_per_round"] = [round(r["monitor"]["sustained_per_s"] / r["bare"]["sustained_per_s"], 4)
                              if r["monitor"]["sustained_per_s"] and r["bare"]["sustained_per_s"] else None
                              for r in rounds_]
    evals = [r["monitor"]["monitor"] for r in rounds_]
    count = sum(e["evaluations"] for e in evals)
    total = sum(e["evaluation_s_total"] for e in evals)
    out["evaluations"] = count
    out["evaluation_ms_mean"] = round(1000 * total / count, 3) if count else None
    out["alerts_raised"] = sum(e["alerts_raised"] for e in evals)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415
    from loopline_stack.stack import Stack, StackConfig  # noqa: PLC0415

    code = code_under_test(MEASURED_PATHS)  # before the run: this is the code the monitor starts from
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        console.print(f"[yellow]the machine is busy (load {load_before[0]:.1f} on {os.cpu_count()} cores): "
                      "absolute rates will be low and noisy; the ratio, measured in alternating turns, less so[/]")
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    work = ROOT / ".loopline" / f"bench-{run_id}"
    stack = Stack(StackConfig(state_dir=work / "stack", timeout_s=90), progress=lambda m: console.print(f"  {m}"))
    console.print(f"[bold]monitor benchmark[/] (logs in {work / 'logs'})")
    state = stack.up()
    os.environ.update(client_env(state.env))  # the benchmark calls the services as the operator
    registry: ServiceSet | None = None
    monitor_env = {}
    if args.windows is not None:
        monitor_env["LOOPLINE_MONITOR_WINDOWS"] = args.windows
    if args.report_every is not None:
        monitor_env["LOOPLINE_MONITOR_REPORT_EVERY"] = str(args.report_every)
    try:
        suffix = uuid.uuid4().hex[:10]
        prefix = f"b{suffix}"
        namer = TopicNamer(prefix)
        bootstrap = state.env["LOOPLINE_KAFKA_BOOTSTRAP"]
        topics = [*namer.platform_topics(), namer.dead_letter_for(namer.predictions(MODEL))]
        asyncio.run(ensure_topics(bootstrap, topics, partitions=PARTITIONS))
        dsn = asyncio.run(create_database(state.env["LOOPLINE_POSTGRES_DSN"], f"b_{suffix}"))
        env = {**state.env, "LOOPLINE_POSTGRES_DSN": dsn, "LOOPLINE_TOPIC_PREFIX": prefix}
        registry = ServiceSet(env, work / "logs" / "registry")
        registry.start(progress=lambda m: console.print(f"  {m}"), names=("registry",))

        def alive(svc: ServiceSet = registry) -> None:
            if not all(svc.alive().values()):
                raise RuntimeError(f"the registry exited during the run; see {svc.log_dir}")

        figures = asyncio.run(rounds(args, Setup(env, prefix, registry.addr("registry"), work, monitor_env, alive)))
    finally:
        if registry is not None:
            registry.stop()
        stack.down()
    return {"benchmark": "monitor", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "code": code,
            "params": {"predictions": args.predictions, "rounds": args.rounds, "partitions": PARTITIONS,
                       "seed": args.seed, "timeout_s": args.timeout, "monitor_env": monitor_env,
                       "poll_s": [POLL_MIN_S, POLL_MAX_S]},
            "machine": machine(load_before),
            "method": "same broker, same pre-published PredictionLogged records (no drift); sides one after the "
                      "other, taking turns first; each its own process, fresh every round; timed by the consumer "
                      "group's committed offsets polled from the bench process; sustained = rows committed after "
                      "the first commit seen / time from it to the last; monitor = the service with its defaults "
                      "(unless monitor_env says otherwise); bare = aiokafka getmany(500) -> "
                      "PredictionLogged.FromString -> commit",
            "summary": summarise(figures["rounds"]), **figures}


# ---- output -------------------------------------------------------------------------------------


def show(result: dict[str, Any]) -> None:
    p = result["params"]
    sm = result["summary"]
    out = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"monitor intake: {p['predictions']:,} predictions x {p['rounds']} rounds, "
                        f"commit {result['code']['commit']}")
    for col in ("", "sustained/s (median)", "per round", "from start/s (median)", "first commit after s",
                "complete"):
        table.add_column(col, justify="right" if col else "left")
    for side in ("monitor", "bare"):
        rs = [r[side] for r in result["rounds"]]
        per = " ".join(f"{r['sustained_per_s'] or 0:,.0f}" for r in rs)
        first = " ".join("n/a" if r["spawn_to_first_commit_s"] is None else f"{r['spawn_to_first_commit_s']:.1f}"
                         for r in rs)
        table.add_row(side, f"{sm[side]['sustained_per_s_median'] or 0:,.0f}", per,
                      f"{sm[side]['from_start_per_s_median'] or 0:,.0f}", first,
                      "yes" if sm[side]["complete"] else "[red]timed out[/]")
    ratio = sm["ratio_monitor_over_bare"]
    table.add_row("[bold]monitor / bare[/]", "n/a" if ratio is None else f"[bold]{ratio:.3f}[/]",
                  " ".join("n/a" if x is None else f"{x:.3f}" for x in sm["ratio_per_round"]), "", "", "")
    out.print(table)

    table = Table(title="what the monitor did, per round (from its /metrics and its topics)")
    for col in ("round", "evaluations", "eval ms (mean)", "batch ms (mean)", "predictions by outcome",
                "published", "alerts"):
        table.add_column(col, justify="left" if col in ("predictions by outcome", "published") else "right")
    for r in result["rounds"]:
        m = r["monitor"]["monitor"]
        table.add_row(str(r["round"]), str(m["evaluations"]), f"{m['evaluation_ms_mean'] or 0:.2f}",
                      f"{m['batch_ms_mean'] or 0:.1f}", json.dumps(m["predictions_by_outcome"]),
                      json.dumps(m["published"]), str(m["alerts_raised"]))
    out.print(table)
    mean = sm["evaluation_ms_mean"]
    for r in result["rounds"]:
        for line in r["monitor"]["monitor"]["alerts"]:
            out.print(f"[yellow]round {r['round']} alert: {line}[/]")
    out.print(f"window evaluation: {sm['evaluations']} evaluations, mean "
              f"{'n/a' if mean is None else f'{mean:.2f} ms'}; alerts raised: {sm['alerts_raised']} "
              "(the data does not drift: any alert is a false alarm)")
    print_context(out, result)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench monitor", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", type=int, default=20_000, help="predictions per round (default 20000)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per side; the median is reported (default 2)")
    p.add_argument("--windows", default=None,
                   help="LOOPLINE_MONITOR_WINDOWS for the monitor, a JSON list (default: the service's own)")
    p.add_argument("--report-every", type=int, default=None,
                   help="LOOPLINE_MONITOR_REPORT_EVERY: Evidently's report every Nth evaluation, 0 only on drift "
                        "(default: the service's own)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one side may take for a round")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.predictions < 1 or args.rounds < 1 or args.timeout <= 0:
        p.error("--predictions, --rounds and --timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    cli("monitor", parse_args(argv), run, show, console)


if __name__ == "__main__":
    main()
