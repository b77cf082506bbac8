"""``python -m bench serving``: Loopline inference against real Triton 2.51 and KServe's ModelServer.

The same exported model (a fraud MLP exported to ONNX by the trainer's exporter), the same client
(``tritonclient.grpc.aio``, closed loops), the same machine, the same run, at concurrency 1, 16,
64 and 256 with batch 1 and 8 rows per request. All servers are started first and then measured
one at a time, point by point, in an order that rotates: on a shared machine whose background
load drifts, the load then falls on every server alike and the ratios stay meaningful. Peers:

- **Triton** 2.51 as PyTriton 0.7 bundles it (own venv: numpy<2), dynamic batching on (max batch 64
  rows, queue delay 2 ms: Loopline's defaults), the ONNX run by onnxruntime in its Python backend;
- **KServe** ModelServer (own venv), OIP gRPC, the ONNX run by onnxruntime, per-request log lines off;
- **Loopline** inference as a process of its own (registry, S3 store, broker and Postgres of a local
  stack, as in production; every prediction logged to Kafka), serving the signed ONNX export (default
  variant) with dynamic batching, and a second process beside it with ``LOOPLINE_INFERENCE_MAX_BATCH=1``
  (unbatched, measured at c=64) for its own ratio, and a third with ``LOOPLINE_AUTH_MODE=none``
  (measured at c=1 and 64) for the cost of authentication.

Figures go to bench/results/serving-<time>.json. The client runs in this process and shares the
cores with the server it measures: on a 2-core machine every figure includes that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from loopline_core import grpcx
from loopline_core.auth import client_env
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, cli, code_under_test, create_database, machine, print_context

console = Console()
MEASURED_PATHS = ["services/inference", "libs/core", "libs/ml"]
CONCURRENCY = (1, 16, 64, 256)
BATCHES = (1, 8)
N_FEATURES = 7
UNBATCHED_AT = 64
OPEN_AT = (1, 64)
"""Where the same inference without authentication (``LOOPLINE_AUTH_MODE=none``) is measured too: the
cost of checking every call's bearer token, alone (c=1) and under load."""
"""Loopline's unbatched process is measured at this concurrency only (its ratio to batched)."""


# ---- load --------------------------------------------------------------------------------------


async def _point(addr: str, model: str, concurrency: int, rows: int, seconds: float, warmup: float) -> dict[str, Any]:
    import tritonclient.grpc.aio as tga  # noqa: PLC0415

    x = np.random.default_rng(rows).normal(size=(rows, N_FEATURES)).astype(np.float32)
    client = grpcx.with_auth(tga.InferenceServerClient(addr))
    inp = tga.InferInput("features", [rows, N_FEATURES], "FP32")
    inp.set_data_from_numpy(x)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds

    async def caller() -> None:
        nonlocal errors
        while (now := time.perf_counter()) < end:
            try:
                await client.infer(model, [inp], client_timeout=30)
            except Exception:  # noqa: BLE001 - counted: a server that refuses is slower, not faster
                errors += 1
                continue
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append(done - now)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    await client.close()
    lat = np.array(latencies) * 1000
    n = len(latencies)
    return {"concurrency": concurrency, "batch": rows, "requests": n, "errors": errors,
            "rps": n / seconds, "rows_per_s": n * rows / seconds,
            "p50_ms": float(np.percentile(lat, 50)) if n else None,
            "p99_ms": float(np.percentile(lat, 99)) if n else None}


async def _ready(addr: str, model: str, timeout_s: float) -> None:
    import tritonclient.grpc.aio as tga  # noqa: PLC0415

    client = grpcx.with_auth(tga.InferenceServerClient(addr))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if await client.is_model_ready(model):
                    return
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{addr} did not serve {model!r} within {timeout_s:.0f}s")
    finally:
        await client.close()


def measure(servers: dict[str, str], model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every point on every server, interleaved: for each (concurrency, batch) each server in turn, the
    order rotating from point to point, so a change in the machine's background load falls on all
    servers alike. With ``--rounds`` > 1 each server's point is the round of median throughput."""
    points = [(c, b) for b in BATCHES for c in CONCURRENCY]
    out = []
    for i, (c, b) in enumerate(points):
        names = [n for n in servers if (not n.endswith("-unbatched") or c == UNBATCHED_AT)
                 and (not n.endswith("-open") or c in OPEN_AT)]
        names = names[i % len(names):] + names[:i % len(names)]
        for name in names:
            rounds = sorted((asyncio.run(_point(servers[name], model, c, b, args.seconds, args.warmup))
                             for _ in range(args.rounds)), key=lambda p: p["rps"])
            p = rounds[len(rounds) // 2]
            console.print(f"  {name:<18} c={c:<4} batch={b}  {p['rps']:8.0f} req/s  p50 {p['p50_ms'] or 0:7.2f} ms  "
                          f"p99 {p['p99_ms'] or 0:7.2f} ms  errors {p['errors']}")
            out.append({"server": name, **p, "rounds_rps": [round(r["rps"]) for r in rounds]})
    return out


# ---- servers -----------------------------------------------------------------------------------


def export(work: Path) -> tuple[Path, Any]:
    from loopline_ml.exports import export_onnx  # noqa: PLC0415
    from loopline_testing.builders import make_model  # noqa: PLC0415

    model = make_model(1)
    return export_onnx(model, work / "onnx", "fraud"), model


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loopline_stack import peers  # noqa: PLC0415

    code = code_under_test(MEASURED_PATHS)
    load_before = os.getloadavg()
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    work = ROOT / ".loopline" / f"bench-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]serving benchmark[/] (logs in {work})")
    onnx, _ = export(Path(tempfile.mkdtemp(dir=work)))
    servers: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as running:
        for kind in ("triton", "kserve"):
            if kind in args.skip:
                continue
            try:
                servers[kind] = running.enter_context(peers.serve(
                    kind, onnx, "fraud", N_FEATURES, work / f"{kind}.log", progress=lambda m: console.print(f"  {m}")))
            except Exception as exc:  # noqa: BLE001 - one peer failing to install or start is reported, not fatal
                skipped[kind] = str(exc)[-600:]
                console.print(f"[yellow]{kind} not measured: {exc}[/]")
        servers.update(start_loopline(running, work))
        console.print(f"  all servers answer: {', '.join(servers)}; measuring, interleaved")
        results = measure(servers, "fraud", args)
    for name in servers:
        if not any(p["requests"] for p in results if p["server"] == name):
            skipped[name] = f"every request failed; see the logs in {work}"
    return {"benchmark": "serving", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "code": code,
            "params": {"seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
                       "concurrency": CONCURRENCY, "batch": BATCHES},
            "machine": machine(load_before),
            "method": "closed-loop tritonclient.grpc.aio callers in the bench process; all servers up at once and "
                      "measured in turn point by point (rotating order); the same ONNX export everywhere "
                      "(onnxruntime, 1 intra-op thread per call)",
            "not_measured": skipped, "points": results, "ratios": ratios(results)}


def start_loopline(running: contextlib.ExitStack, work: Path) -> dict[str, str]:
    """Loopline inference as its own process against a local stack (registry, S3 store, broker, Postgres,
    as in production), serving the signed ONNX export; a second inference process, unbatched, beside it."""
    from loopline.registry.v1 import registry_pb2 as rpb  # noqa: PLC0415
    from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415
    from loopline_core.registry import RegistryClient  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415
    from loopline_stack.stack import Stack, StackConfig  # noqa: PLC0415
    from loopline_testing.builders import register_signed_model, set_alias  # noqa: PLC0415

    stack = Stack(StackConfig(state_dir=work / "stack", timeout_s=90), progress=lambda m: console.print(f"  {m}"))
    state = stack.up()
    os.environ.update(client_env(state.env))  # the benchmark calls the services as the operator
    running.callback(stack.down)
    suffix = uuid.uuid4().hex[:10]
    asyncio.run(ensure_topics(state.env["LOOPLINE_KAFKA_BOOTSTRAP"], TopicNamer(f"b{suffix}").platform_topics()))
    dsn = asyncio.run(create_database(state.env["LOOPLINE_POSTGRES_DSN"], f"b_{suffix}"))
    env = {**state.env, "LOOPLINE_POSTGRES_DSN": dsn, "LOOPLINE_TOPIC_PREFIX": f"b{suffix}"}
    common = {"LOOPLINE_INFERENCE_RECONCILE_S": "2", "LOOPLINE_PREDICTION_LOG_WHEN_FULL": "drop"}
    batched = ServiceSet(env, work / "logs-loopline", {"inference": common})
    batched.start(names=("registry", "inference"))
    running.callback(batched.stop)
    registry = batched.addr("registry")
    unbatched = ServiceSet(env, work / "logs-loopline-unbatched", {"inference": {
        **common, "LOOPLINE_REGISTRY_ADDR": registry, "LOOPLINE_INFERENCE_MAX_BATCH": "1"}})
    unbatched.start(names=("inference",))
    running.callback(unbatched.stop)
    open_ = ServiceSet(env, work / "logs-loopline-open", {"inference": {
        **common, "LOOPLINE_REGISTRY_ADDR": registry, "LOOPLINE_AUTH_MODE": "none"}})
    open_.start(names=("inference",))
    running.callback(open_.stop)

    async def setup() -> None:
        rc = RegistryClient(registry)
        await rc.apply_model(rpb.Model(name="fraud", variants=rpb.VariantPolicy(default_variant="onnx")),
                             actor="bench")
        await rc.close()
        v = await register_signed_model(env, registry, "fraud", seed=1, exports=True)
        await set_alias(registry, "fraud", "champion", v.version)

    asyncio.run(setup())
    out = {"loopline": batched.addr("inference"), "loopline-unbatched": unbatched.addr("inference"),
           "loopline-open": open_.addr("inference")}
    for addr in out.values():
        asyncio.run(_ready(addr, "fraud", 60))
    return out


def ratios(points: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(p["server"], p["concurrency"], p["batch"]): p for p in points}
    out: dict[str, Any] = {}
    for b in BATCHES:
        for c in CONCURRENCY:
            ours = by.get(("loopline", c, b))
            if ours is None:
                continue
            for peer_name in ("triton", "kserve"):
                theirs = by.get((peer_name, c, b))
                if theirs and theirs["rps"] and ours["rps"]:
                    out[f"loopline/{peer_name} rps c={c} b={b}"] = round(ours["rps"] / theirs["rps"], 2)
                    if ours["p99_ms"] and theirs["p99_ms"]:
                        out[f"loopline/{peer_name} p99 c={c} b={b}"] = round(ours["p99_ms"] / theirs["p99_ms"], 2)
        for c in OPEN_AT:
            ours, opened = by.get(("loopline", c, b)), by.get(("loopline-open", c, b))
            if ours and opened and opened["rps"]:
                out[f"token/no-auth rps c={c} b={b}"] = round(ours["rps"] / opened["rps"], 3)
                if ours["p50_ms"] and opened["p50_ms"]:
                    out[f"token/no-auth p50 c={c} b={b}"] = round(ours["p50_ms"] / opened["p50_ms"], 3)
        unb = by.get(("loopline-unbatched", UNBATCHED_AT, b))
        ours = by.get(("loopline", UNBATCHED_AT, b))
        if unb and ours and unb["rps"]:
            out[f"batched/unbatched rps c={UNBATCHED_AT} b={b}"] = round(ours["rps"] / unb["rps"], 2)
    return out


def show(result: dict[str, Any]) -> None:
    t = Table(title="serving: requests/s and latency (tritonclient.grpc.aio, closed loop)")
    for col in ("server", "c", "batch", "req/s", "rows/s", "p50 ms", "p99 ms", "errors"):
        t.add_column(col, justify="right" if col not in ("server",) else "left")
    for p in result["points"]:
        t.add_row(p["server"], str(p["concurrency"]), str(p["batch"]), f"{p['rps']:.0f}", f"{p['rows_per_s']:.0f}",
                  f"{p['p50_ms'] or 0:.2f}", f"{p['p99_ms'] or 0:.2f}", str(p["errors"]))
    console.print(t)
    for k, v in result["ratios"].items():
        console.print(f"  {k}: [bold]{v}[/]")
    for k, why in result["not_measured"].items():
        console.print(f"[yellow]  {k} not measured: {why}[/]")
    print_context(console, result)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each point")
    p.add_argument("--rounds", type=int, default=1, help="rounds per point; the round of median req/s is kept")
    p.add_argument("--skip", nargs="*", default=[], choices=["triton", "kserve"], help="peers to leave out")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1:
        p.error("--seconds must be positive, --warmup not negative and --rounds at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    cli("serving", parse_args(argv), run, show, console)


if __name__ == "__main__":
    main()
