"""Online feature reads: Loopline's GetOnlineFeatures against Feast 0.67 on the same Postgres, same run.

    python -m bench features [--entities N] [--events E] [--seconds S] [--concurrency C] [--check K]

It starts its own local stack (Tansu, PostgreSQL, SeaweedFS on free ports) and the feature service
(``ServiceSet``), publishes ~E valid transactions per customer for N customers over the last 7 days
to ``<prefix>.valid.transactions`` (EventIngested records keyed by customer id, in event-time order),
and waits until GetOnlineFeatures counts every one of them. It then reads each customer's vector
from Loopline at one request time (``as_of``) and writes exactly those values into Feast's Postgres
online store (its own database on the same server) with ``write_to_online_store``, and checks that
Feast answers a sample of K customers with the same values. Then, one after the other so that no
two share the two cores:

1. Loopline ``GetOnlineFeatures`` over gRPC (a ``grpc.aio`` client, as a service calls it),
2. Feast's HTTP feature server (``feast serve``, one worker, its own process; POST /get-online-features),
3. Feast's in-process SDK ``store.get_online_features`` (in the Feast venv, timing itself),

each with batches of 1 and of 64 random customers, at concurrency 1 (latency) and at C (throughput):
closed loops for S seconds after a short warm-up; calls/s, rows/s, p50/p95/p99 per call.

Feast runs in its own venv (``.cache/bench-feast-<hash of bench/feast-requirements.txt>/``, built with
``python3.11 -m venv`` + pip on first use, about a minute), as subprocesses running
``bench/feast_peer.py``: its pins (protobuf 7, numpy 2.4, ...) cannot share the project's. Everything
started here is stopped by its own pid in ``finally``. Figures go to the terminal and to
``bench/results/features-<utc time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loopline_core import grpcx
from loopline_core.auth import client_env
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, cli, code_under_test, create_database, machine, print_context

# The features compared, in this order (one edit to switch; the harness compares whatever names
# Loopline's response gives back).
FEATURES = ["txn_count_1h", "txn_count_24h", "mean_amount_24h", "sum_amount_24h", "txn_count_7d", "max_amount_7d",
            "std_amount_7d"]
VIEW = "transactions"
COUNT_FEATURE = "txn_count_7d"  # how the load is known to be complete: every event counted in 7 days
SPAN_S = 6.5 * 86400  # events fall in [as_of - SPAN_S, as_of - 60 s): inside every view's 7-day TTL
BATCHES = (1, 64)
LOOPLINE, SERVER, SDK = "loopline grpc", "feast feature server", "feast sdk (in-process)"
LOOPLINE_FLOOR, SERVER_FLOOR = "grpc floor (health check)", "http floor (GET /health)"
TARGETS = {"loopline_p99_ms_batch1": 5.0, "throughput_vs_feature_server": 2.0, "rows_per_s_64_vs_sdk": 2.0}

PEER = ROOT / "bench" / "feast_peer.py"
REQUIREMENTS = ROOT / "bench" / "feast-requirements.txt"
CACHE = ROOT / ".cache"
MEASURED_PATHS = ("services/feature/src", "libs/core/loopline_core", "features")

console = Console(stderr=True)


# ---- the Feast venv -----------------------------------------------------------------------------


def feast_venv() -> tuple[Path, float | None]:
    """The Feast venv for the pinned requirements, built on first use; (its dir, seconds spent building)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = CACHE / f"bench-feast-{digest}"
    done = venv / ".complete"
    if done.is_file():
        return venv, None
    python = shutil.which("python3.11")
    if python is None:
        raise RuntimeError("python3.11 is needed to build the Feast venv (feast 0.67 with its own pins)")
    if venv.exists():
        shutil.rmtree(venv)  # a build that did not finish
    console.print(f"building the Feast venv in {venv.relative_to(ROOT)} (once; about a minute) ...")
    started = time.monotonic()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "-r", str(REQUIREMENTS)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"pip could not build the Feast venv:\n{tail}")
    done.write_text(f"{datetime.now(UTC).isoformat()}\n")
    took = time.monotonic() - started
    console.print(f"  Feast venv ready in {took:.0f}s")
    return venv, took


def run_peer(venv: Path, command: str, spec: dict[str, Any], work: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``bench/feast_peer.py COMMAND`` with the Feast venv's python; its last stdout line is JSON."""
    path = work / f"peer-{command}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(spec))
    log = work / "logs" / "feast-peer.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as err:
        proc = subprocess.Popen([str(venv / "bin" / "python"), str(PEER), command, str(path)], cwd=work,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"feast peer {command} failed ({proc.returncode}): {' | '.join(tail)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class FeastServer:
    """``feast serve`` from the Feast venv on a free loopback port, stopped by its own pid (and its
    session: gunicorn's worker is its child)."""

    def __init__(self, venv: Path, repo: Path, port: int, log: Path) -> None:
        # One worker, as Loopline's feature service is one process; no periodic worker restarts
        # (gunicorn's --max-requests 1000 default would restart it mid-measurement).
        self.args = [str(venv / "bin" / "feast"), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port),
                     "-w", "1", "--no-access-log", "--max-requests", "0", "-r", "3600"]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        import httpx  # noqa: PLC0415

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=self.log.parent, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"feast serve did not answer /health within {timeout_s:.0f}s; see {self.log}")

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"feast serve exited ({self.proc.returncode}): {' | '.join(tail)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # gunicorn's master stops its worker on SIGTERM
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started for it, by its own pid
            self.proc.wait(timeout=5)


# ---- the workload -------------------------------------------------------------------------------


@dataclass
class Loaded:
    as_of: float
    entities: list[str]
    counts: dict[str, int]
    events: int


def make_events(entities: int, per_entity: float, as_of: float, seed: int) -> tuple[list[tuple[float, str, bytes]],
                                                                                     dict[str, int]]:
    """(event time, customer id, EventIngested bytes) in event-time order, and the events per customer.

    Between 1 and 2E-1 events per customer (mean E); a third of them in the last 24 h and a tenth of
    those in the last hour, so every window has something to aggregate."""
    from loopline.ingest.v1.envelope_pb2 import EventIngested  # noqa: PLC0415
    from loopline_core.events import metadata, timestamp  # noqa: PLC0415

    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not cryptography
    categories = ["grocery", "electronics", "travel", "restaurants", "gift_cards", "fuel"]
    drafts: list[tuple[float, str, str, float]] = []
    counts: dict[str, int] = {}
    top = max(1, round(2 * per_entity - 1))
    for c in range(entities):
        customer = f"cust-{c:06d}"
        n = rng.randint(1, top)
        counts[customer] = n
        for _ in range(n):
            u = rng.random()
            if u < 0.03:
                age = rng.uniform(60, 3600)
            elif u < 0.33:
                age = rng.uniform(3600, 86400)
            else:
                age = rng.uniform(86400, SPAN_S)
            drafts.append((as_of - age, customer, uuid.UUID(int=rng.getrandbits(128), version=4).hex,
                           round(rng.lognormvariate(3.5, 1.0), 2)))
    drafts.sort()
    now = time.time()
    out = []
    for t, customer, event_id, amount in drafts:
        payload = {"event_id": event_id, "customer_id": customer, "merchant_id": f"m-{rng.randrange(500):03d}",
                   "amount": amount, "currency": "EUR", "country": "DE", "merchant_category": rng.choice(categories),
                   "ts": t}
        env = EventIngested(metadata=metadata("bench-features", event_id), dataset="transactions",
                            event_time=timestamp(t), ingest_time=timestamp(now), content_type="application/json",
                            payload=json.dumps(payload).encode())
        out.append((t, customer, env.SerializeToString()))
    return out, counts


def request(entities: Sequence[str], as_of: float, features: Sequence[str]) -> Any:
    from loopline.feature.v1 import feature_pb2 as pb  # noqa: PLC0415
    from loopline_core.events import timestamp  # noqa: PLC0415

    return pb.GetOnlineFeaturesRequest(feature_view=VIEW, entity_ids=list(entities), as_of=timestamp(as_of),
                                       features=list(features))


async def load_loopline(bootstrap: str, topic: str, addr: str, args: argparse.Namespace, as_of: float,
                        alive: Callable[[], None]) -> Loaded:
    """Publish the events and wait until GetOnlineFeatures counts each customer's events."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415
    from loopline.feature.v1 import feature_pb2_grpc  # noqa: PLC0415

    events, counts = make_events(args.entities, args.events, as_of, args.seed)
    console.print(f"publishing {len(events):,} transactions for {len(counts):,} customers to {topic} ...")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bench-features", acks="all", linger_ms=5,
                                enable_idempotence=False)
    await producer.start()
    started = time.monotonic()
    try:
        pending = [await producer.send(topic, value, key=customer.encode()) for _, customer, value in events]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    entities = sorted(counts)
    async with grpcx.channel(addr) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        deadline = time.monotonic() + args.timeout
        last = -1
        while True:
            seen = 0
            matching = 0
            for i in range(0, len(entities), 1000):
                chunk = entities[i:i + 1000]
                resp = await stub.GetOnlineFeatures(request(chunk, as_of, [COUNT_FEATURE]))
                for row in resp.rows:
                    got = round(row.values[0]) if row.found else 0
                    seen += got
                    matching += got == counts[row.entity_id]
            if matching == len(entities):
                break
            if seen != last:
                console.print(f"  feature service has counted {seen:,}/{len(events):,} events")
                last = seen
            if time.monotonic() > deadline:
                raise RuntimeError(f"after {args.timeout:.0f}s the feature service counts {seen:,} of "
                                   f"{len(events):,} events ({matching:,}/{len(entities):,} customers complete)")
            alive()
            await asyncio.sleep(1.0)
    took = time.monotonic() - started
    console.print(f"  all {len(events):,} events counted {took:.1f}s after the first send "
                  f"({len(events) / took:,.0f} events/s published and folded into online rows)")
    return Loaded(as_of, entities, counts, len(events))


async def loopline_rows(addr: str, loaded: Loaded) -> tuple[list[str], list[dict[str, Any]]]:
    """Every customer's vector as Loopline serves it at ``as_of``: (feature names, rows)."""
    from loopline.feature.v1 import feature_pb2_grpc  # noqa: PLC0415

    names: list[str] = []
    rows = []
    async with grpcx.channel(addr) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        for i in range(0, len(loaded.entities), 1000):
            resp = await stub.GetOnlineFeatures(request(loaded.entities[i:i + 1000], loaded.as_of, FEATURES))
            names = list(resp.feature_names)
            for row in resp.rows:
                if not row.found:
                    raise RuntimeError(f"Loopline does not find {row.entity_id} after loading it")
                rows.append({"entity_id": row.entity_id, "values": list(row.values),
                             "event_time": row.event_time.seconds + row.event_time.nanos / 1e9})
    return names, rows


def same(a: Sequence[float | None], b: Sequence[float | None]) -> bool:
    """Equal value for value (NaN equals NaN); Feast stores the float64 Loopline served, bit for bit."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif not (x == y or (math.isnan(x) and math.isnan(y))):
            return False
    return True


# ---- measuring ----------------------------------------------------------------------------------


@dataclass
class Measured:
    """One system at one batch size and concurrency, over every round: rates are the median of the
    rounds, percentiles are over every call of every round."""

    system: str
    batch: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    rounds: list[tuple[int, int]] = field(default_factory=list)  # (calls, rows) per round

    def add(self, latencies_ms: list[float], rows: int) -> Measured:
        self.latencies_ms.extend(latencies_ms)
        self.rounds.append((len(latencies_ms), rows))
        return self

    @property
    def calls(self) -> int:
        return len(self.latencies_ms)

    def pct(self, p: float) -> float | None:
        if not self.latencies_ms:
            return None
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]

    @property
    def calls_per_s(self) -> float:
        return statistics.median(c / self.seconds for c, _ in self.rounds) if self.rounds else 0.0

    @property
    def rows_per_s(self) -> float:
        return statistics.median(r / self.seconds for _, r in self.rounds) if self.rounds else 0.0

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {"system": self.system, "batch": self.batch, "concurrency": self.concurrency,
                "seconds_per_round": self.seconds, "rounds": len(self.rounds), "calls": self.calls,
                "rows": sum(r for _, r in self.rounds), "calls_per_s": round(self.calls_per_s, 1),
                "rows_per_s": round(self.rows_per_s, 1),
                "calls_per_s_by_round": [round(c / self.seconds, 1) for c, _ in self.rounds],
                "p50_ms": r(self.pct(50)), "p95_ms": r(self.pct(95)), "p99_ms": r(self.pct(99)),
                "max_ms": r(max(self.latencies_ms) if self.latencies_ms else None)}


Call = Callable[[int, int], Awaitable[int]]  # (worker, call number) -> rows answered


async def closed_loop(call: Call, concurrency: int, seconds: float, warmup: float) -> tuple[list[float], int]:
    """``concurrency`` workers call back to back; calls that start in the ``seconds`` after ``warmup``
    count (latency per call, rows answered)."""
    loop = asyncio.get_running_loop()
    count_from = loop.time() + warmup
    stop_at = count_from + seconds
    latencies: list[float] = []
    rows = 0

    async def worker(k: int) -> None:
        nonlocal rows
        i = 0
        while True:
            t0 = loop.time()
            if t0 >= stop_at:
                return
            got = await call(k, i)
            t1 = loop.time()
            i += 1
            if t0 >= count_from:
                latencies.append((t1 - t0) * 1000)
                rows += got
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, rows


def batches_for(entities: Sequence[str], batch: int, worker: int, seed: int) -> list[list[str]]:
    """256 random batches per worker, the same for every system."""
    rng = random.Random(seed * 1000 + worker)  # noqa: S311 - reproducible batches
    return [rng.sample(list(entities), batch) for _ in range(256)]


async def measure_loopline(addr: str, loaded: Loaded, batch: int, concurrency: int,
                           args: argparse.Namespace) -> tuple[list[float], int]:
    from loopline.feature.v1 import feature_pb2_grpc  # noqa: PLC0415

    async with grpcx.channel(addr) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        requests = [[request(b, loaded.as_of, FEATURES) for b in batches_for(loaded.entities, batch, k, args.seed)]
                    for k in range(concurrency)]

        async def call(k: int, i: int) -> int:
            resp = await stub.GetOnlineFeatures(requests[k][i % 256])
            return len(resp.rows)

        return await closed_loop(call, concurrency, args.seconds, args.warmup)


async def measure_grpc_floor(addr: str, args: argparse.Namespace) -> tuple[list[float], int]:
    """The same client and server stack answering a health check: what a call costs before any work."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    async with grpcx.channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        req = health_pb2.HealthCheckRequest(service="loopline.feature.v1.FeatureService")

        async def call(_k: int, _i: int) -> int:
            await stub.Check(req)
            return 0

        return await closed_loop(call, 1, args.seconds, args.warmup)


async def measure_server(url: str, loaded: Loaded, features: Sequence[str], batch: int, concurrency: int,
                         args: argparse.Namespace) -> tuple[list[float], int]:
    import httpx  # noqa: PLC0415

    refs = [f"{VIEW}:{n}" for n in features]
    bodies = [[json.dumps({"features": refs, "entities": {"customer_id": b}}).encode()
               for b in batches_for(loaded.entities, batch, k, args.seed)] for k in range(concurrency)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def call(k: int, i: int) -> int:
            resp = await client.post("/get-online-features", content=bodies[k][i % 256],
                                     headers={"content-type": "application/json"})
            resp.raise_for_status()
            return len(resp.json()["results"][0]["values"])

        return await closed_loop(call, concurrency, args.seconds, args.warmup)


async def measure_http_floor(url: str, args: argparse.Namespace) -> tuple[list[float], int]:
    """The same HTTP client and feast serve answering GET /health."""
    import httpx  # noqa: PLC0415

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def call(_k: int, _i: int) -> int:
            (await client.get("/health")).raise_for_status()
            return 0

        return await closed_loop(call, 1, args.seconds, args.warmup)


def measure_sdk(venv: Path, spec: dict[str, Any], loaded: Loaded, runs: Sequence[tuple[int, int]],
                args: argparse.Namespace, work: Path) -> list[tuple[list[float], int]]:
    """Every (batch, concurrency) of ``runs`` in one Feast process, in turn."""
    out = run_peer(venv, "time", {**spec, "entities": loaded.entities, "seed": args.seed, "seconds": args.seconds,
                                  "warmup": args.warmup,
                                  "runs": [{"batch": b, "concurrency": c} for b, c in runs]}, work,
                   timeout_s=len(runs) * (args.seconds + args.warmup + 5) + 120)
    results = []
    for run in out["runs"]:
        if run["errors"]:
            raise RuntimeError(f"Feast SDK failed: {run['errors'][0]}")
        results.append((run["latencies_ms"], run["rows"]))
    return results


def show_one(m: Measured) -> None:
    calls, rows = m.rounds[-1]
    lat = sorted(m.latencies_ms[-calls:]) if calls else [0.0]
    console.print(f"  {m.system}, batch {m.batch}, concurrency {m.concurrency}: {calls / m.seconds:,.0f} calls/s, "
                  f"{rows / m.seconds:,.0f} rows/s, p50 {lat[len(lat) // 2]:.2f} ms, "
                  f"p99 {lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]:.2f} ms")


# ---- orchestration ------------------------------------------------------------------------------






def ratios(measured: list[Measured], concurrency: int) -> dict[str, Any]:
    def get(system: str, batch: int, conc: int) -> Measured | None:
        return next((m for m in measured if m.system == system and m.batch == batch and m.concurrency == conc), None)

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    one = get(LOOPLINE, 1, 1)
    p99 = one.pct(99) if one else None
    tp = {}
    for batch in BATCHES:
        ours, theirs = get(LOOPLINE, batch, concurrency), get(SERVER, batch, concurrency)
        tp[f"batch_{batch}"] = div(ours.calls_per_s if ours else None, theirs.calls_per_s if theirs else None)
    ours64 = get(LOOPLINE, 64, concurrency)
    sdk64 = [m for m in measured if m.system == SDK and m.batch == 64]
    best_sdk = max(sdk64, key=lambda m: m.rows_per_s) if sdk64 else None
    rows_ratio = div(ours64.rows_per_s if ours64 else None, best_sdk.rows_per_s if best_sdk else None)
    return {
        "loopline_p99_ms_batch1": None if p99 is None else round(p99, 3),
        "throughput_vs_feature_server": tp,
        "rows_per_s_64_vs_sdk": rows_ratio,
        "sdk_64_best_concurrency": best_sdk.concurrency if best_sdk else None,
        "targets": TARGETS,
        "met": {"loopline_p99_ms_batch1": p99 is not None and p99 <= TARGETS["loopline_p99_ms_batch1"],
                "throughput_vs_feature_server": all(r is not None and r >= TARGETS["throughput_vs_feature_server"]
                                                    for r in tp.values()),
                "rows_per_s_64_vs_sdk": rows_ratio is not None and rows_ratio >= TARGETS["rows_per_s_64_vs_sdk"]},
        "definitions": {
            "loopline_p99_ms_batch1": "Loopline gRPC, one entity per call, concurrency 1",
            "throughput_vs_feature_server": f"calls/s, Loopline gRPC over feast serve, both at concurrency "
                                            f"{concurrency}, per batch size",
            "rows_per_s_64_vs_sdk": f"rows/s with 64-entity batches, Loopline gRPC at concurrency {concurrency} "
                                    "over the Feast SDK's better figure (one thread or "
                                    f"{concurrency} threads)",
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915 - the run's steps, in order
    from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415
    from loopline_stack import procs  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415
    from loopline_stack.stack import Stack, StackConfig  # noqa: PLC0415

    code = code_under_test(MEASURED_PATHS)
    venv, venv_build_s = feast_venv()
    load_before = os.getloadavg()
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    work = ROOT / ".loopline" / f"bench-features-{run_id}"
    work.mkdir(parents=True)
    stack = Stack(StackConfig(state_dir=work / "stack", timeout_s=90), progress=lambda m: console.print(f"  {m}"))
    console.print(f"[bold]online feature benchmark[/] (logs in {work / 'logs'})")
    state = stack.up()
    os.environ.update(client_env(state.env))  # the benchmark calls the services as the operator
    services: ServiceSet | None = None
    server: FeastServer | None = None
    try:
        suffix = uuid.uuid4().hex[:10]
        prefix = f"b{suffix}"
        bootstrap = state.env["LOOPLINE_KAFKA_BOOTSTRAP"]
        namer = TopicNamer(prefix)
        asyncio.run(ensure_topics(bootstrap, namer.platform_topics(), partitions=3))
        base_dsn = state.env["LOOPLINE_POSTGRES_DSN"]
        dsn = asyncio.run(create_database(base_dsn, f"b_{suffix}"))
        feast_db = f"feast_{suffix}"
        asyncio.run(create_database(base_dsn, feast_db))
        env = {**state.env, "LOOPLINE_POSTGRES_DSN": dsn, "LOOPLINE_TOPIC_PREFIX": prefix}
        services = ServiceSet(env, work / "logs")
        services.start(progress=lambda m: console.print(f"  {m}"), names=("feature",))
        addr = services.addr("feature")

        def alive(svc: ServiceSet = services) -> None:
            dead = [name for name, ok in svc.alive().items() if not ok]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the run; logs in {work / 'logs'}")

        as_of = float(math.floor(time.time()))
        loaded = asyncio.run(load_loopline(bootstrap, namer.valid("transactions"), addr, args, as_of, alive))
        names, rows = asyncio.run(loopline_rows(addr, loaded))
        if names != FEATURES:
            console.print(f"[yellow]the feature service answers {names}, not {FEATURES}: comparing those[/]")
        rows_file = work / "loopline-rows.json"
        rows_file.write_text(json.dumps(rows))

        # Feast: its own database on the same PostgreSQL server, loaded with exactly Loopline's values.
        pg = urlsplit(base_dsn)
        spec = {"repo": str(work / "feast-repo"), "project": "loopline_bench", "view": VIEW, "features": names,
                "rows": str(rows_file), "max_conn": max(8, args.concurrency),
                "postgres": {"host": pg.hostname, "port": pg.port, "database": feast_db, "schema": "feast",
                             "user": pg.username or "postgres"}}
        console.print("Feast: applying the repo and writing the online rows ...")
        feast_setup = run_peer(venv, "setup", spec, work, timeout_s=600)
        console.print(f"  Feast {feast_setup['feast_version']}: {feast_setup['rows']:,} rows written in "
                      f"{feast_setup['write_s']:.1f}s")
        by_id = {r["entity_id"]: r["values"] for r in rows}
        sample = random.Random(args.seed).sample(  # noqa: S311 - reproducible sample
            loaded.entities, min(args.check, len(loaded.entities)))
        answered = run_peer(venv, "read", {**spec, "entities": sample}, work, timeout_s=300)["rows"]
        wrong = [e for e in sample if not same(by_id[e], answered.get(e, []))]
        if wrong:
            raise RuntimeError(f"Feast's SDK answers {len(wrong)}/{len(sample)} sampled customers differently "
                               f"from Loopline, e.g. {wrong[0]}: {answered.get(wrong[0])} vs {by_id[wrong[0]]}")
        console.print(f"  Feast's SDK answers the {len(sample)} sampled customers with Loopline's values")

        # feast serve idles (one worker, no requests) while the others are measured; so does Loopline's
        # feature service while Feast is.
        server = FeastServer(venv, Path(spec["repo"]), procs.free_port(), work / "logs" / "feast-serve.log")
        server.start()
        served = asyncio.run(server_answers(server.url, sample[:64], names))
        wrong = [e for e in sample[:64] if not same(by_id[e], served.get(e, []))]
        if wrong:
            raise RuntimeError(f"feast serve answers {len(wrong)}/64 sampled customers differently from Loopline")
        console.print("  feast serve answers 64 sampled customers with Loopline's values")

        conc = sorted({1, args.concurrency})
        runs = [(b, c) for b in BATCHES for c in conc]
        table: dict[tuple[str, int, int], Measured] = {}

        def slot(system: str, batch: int, c: int) -> Measured:
            return table.setdefault((system, batch, c), Measured(system, batch, c, args.seconds))

        url = server.url
        for k in range(args.rounds):
            # Rounds alternate the systems, so a burst of load from elsewhere on the machine hits one
            # round of each rather than one system.
            console.print(f"[bold]round {k + 1}/{args.rounds}[/]")
            show_one(slot(LOOPLINE_FLOOR, 0, 1).add(*asyncio.run(measure_grpc_floor(addr, args))))
            for b, c in runs:
                show_one(slot(LOOPLINE, b, c).add(*asyncio.run(measure_loopline(addr, loaded, b, c, args))))
            alive()
            show_one(slot(SERVER_FLOOR, 0, 1).add(*asyncio.run(measure_http_floor(url, args))))
            for b, c in runs:
                show_one(slot(SERVER, b, c).add(*asyncio.run(measure_server(url, loaded, names, b, c, args))))
            server.check()
            for (b, c), got in zip(runs, measure_sdk(venv, spec, loaded, runs, args, work), strict=True):
                show_one(slot(SDK, b, c).add(*got))
        measured = list(table.values())
    finally:
        if server is not None:
            server.stop()
        if services is not None:
            services.stop()
        stack.down()
    return {"benchmark": "features", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "code": code,
            "params": {"entities": args.entities, "events_per_entity": args.events, "events": loaded.events,
                       "seconds": args.seconds, "rounds": args.rounds, "warmup": args.warmup,
                       "concurrency": args.concurrency,
                       "check": args.check, "seed": args.seed, "as_of": as_of, "features": names},
            "feast": {"version": feast_setup["feast_version"], "venv": str(venv.relative_to(ROOT)),
                      "venv_built_s": None if venv_build_s is None else round(venv_build_s, 1),
                      "online_store": "postgres (same server, own database)", "server_workers": 1,
                      "rows_written": feast_setup["rows"], "write_s": feast_setup["write_s"]},
            "machine": machine(load_before),
            "method": "closed loops (each worker calls back to back) with the same random batches for every "
                      "system; systems measured one after the other, in alternating rounds (rates: median of "
                      "the rounds; percentiles: all calls); floors: a health check on the same client/server; "
                      "Loopline = the feature service process "
                      "computing the windows at as_of from its online rows, called with grpc.aio from the bench "
                      "process; feast serve = one gunicorn/uvicorn worker, called with httpx (keep-alive, one "
                      "connection per worker), JSON parsed; feast sdk = get_online_features in the Feast venv, "
                      "threads for concurrency > 1; latency per call as the caller sees it",
            "measurements": [m.as_dict() for m in measured],
            "ratios": ratios(measured, args.concurrency)}


async def server_answers(url: str, entities: Sequence[str], names: Sequence[str]) -> dict[str, list[float | None]]:
    import httpx  # noqa: PLC0415

    body = {"features": [f"{VIEW}:{n}" for n in names], "entities": {"customer_id": list(entities)}}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        resp = await client.post("/get-online-features", json=body)
        resp.raise_for_status()
    out = resp.json()
    columns = {name: out["results"][i]["values"] for i, name in enumerate(out["metadata"]["feature_names"])}
    return {e: [columns[n][i] for n in names] for i, e in enumerate(columns["customer_id"])}


# ---- output -------------------------------------------------------------------------------------


def show(result: dict[str, Any]) -> None:
    params = result["params"]
    out = Console(width=None if sys.stdout.isatty() else 130)
    table = Table(title=f"online feature reads: {params['entities']:,} customers, {params['events']:,} events, "
                        f"{len(params['features'])} features, {params['rounds']} rounds x {params['seconds']:g}s, "
                        f"commit {result['code']['commit']}")
    for col in ("system", "batch", "conc.", "calls/s", "rows/s", "p50 ms", "p95 ms", "p99 ms", "calls"):
        table.add_column(col, justify="left" if col == "system" else "right")

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:,.2f}"

    order = [LOOPLINE_FLOOR, LOOPLINE, SERVER_FLOOR, SERVER, SDK]
    for m in sorted(result["measurements"], key=lambda m: (order.index(m["system"]), m["batch"], m["concurrency"])):
        floor = m["batch"] == 0
        table.add_row(m["system"], "-" if floor else str(m["batch"]), str(m["concurrency"]),
                      f"{m['calls_per_s']:,.0f}", "-" if floor else f"{m['rows_per_s']:,.0f}", ms(m["p50_ms"]),
                      ms(m["p95_ms"]), ms(m["p99_ms"]), f"{m['calls']:,}", end_section=m["system"] == LOOPLINE and
                      m["batch"] == max(BATCHES) and m["concurrency"] == params["concurrency"])
    out.print(table)
    out.print("rates: median of the rounds; percentiles: every call of every round, as the caller sees it. "
              "floor: a call that does no work on the same client and server stack")
    r = result["ratios"]

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]not met[/]"

    table = Table(title="targets (issue 7)")
    for col in ("", "measured", "target", ""):
        table.add_column(col, justify="left" if col == "" else "right")
    table.add_row("Loopline p99, 1 entity, concurrency 1", ms(r["loopline_p99_ms_batch1"]) + " ms",
                  f"≤ {TARGETS['loopline_p99_ms_batch1']:g} ms", verdict(r["met"]["loopline_p99_ms_batch1"]))
    for batch, ratio in r["throughput_vs_feature_server"].items():
        table.add_row(f"calls/s vs feast serve, {batch.replace('_', ' ')}, concurrency {params['concurrency']}",
                      "n/a" if ratio is None else f"{ratio:.2f}x",
                      f"≥ {TARGETS['throughput_vs_feature_server']:g}x",
                      verdict(ratio is not None and ratio >= TARGETS["throughput_vs_feature_server"]))
    ratio = r["rows_per_s_64_vs_sdk"]
    table.add_row(f"rows/s vs Feast SDK, batch 64 (SDK at concurrency {r['sdk_64_best_concurrency']})",
                  "n/a" if ratio is None else f"{ratio:.2f}x", f"≥ {TARGETS['rows_per_s_64_vs_sdk']:g}x",
                  verdict(r["met"]["rows_per_s_64_vs_sdk"]))
    out.print(table)
    print_context(out, result)





def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench features", description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=10_000, help="customers loaded into both stores (default 10000)")
    p.add_argument("--events", type=float, default=5.0, help="mean events per customer over 6.5 days (default 5)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds, each measuring every system in turn; rates are the median (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of calls before each measurement counts")
    p.add_argument("--concurrency", type=int, default=8,
                   help="callers in flight for the throughput measurements (default 8; latency: 1)")
    p.add_argument("--check", type=int, default=200, help="customers whose Feast values are checked (default 200)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the load (default 600)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.entities < max(BATCHES) or args.events < 1 or args.seconds <= 0 or min(args.concurrency, args.rounds) < 1:
        p.error(f"--entities must be at least {max(BATCHES)}, --events at least 1, --seconds, --concurrency and "
                "--rounds positive")
    return args





def main(argv: Sequence[str] | None = None) -> None:
    cli("features", parse_args(argv), run, show, console)


if __name__ == "__main__":
    main()
