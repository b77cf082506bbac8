"""``python -m bench serving``: Loopline inference against real Triton 2.51 and KServe's ModelServer.

The same exported model (a fraud MLP exported to ONNX by the trainer's exporter), the same client
(``tritonclient.grpc.aio``, closed loops), the same machine, the same run. Each server is measured
on its own (never concurrently) at concurrency 1, 16, 64 and 256 with batch 1 and 8 rows per
request. Peers:

- **Triton** 2.51 as PyTriton 0.7 bundles it (own venv: numpy<2), dynamic batching on (max batch 64,
  queue delay 2 ms), the ONNX run by onnxruntime in its Python backend;
- **KServe** ModelServer (own venv), OIP gRPC, the ONNX run by onnxruntime;
- **Loopline** inference as a process of its own (registry, S3 store, broker and Postgres of a local
  stack, as in production), serving the signed ONNX export (default variant) with dynamic batching,
  and once more with ``LOOPLINE_INFERENCE_MAX_BATCH=1`` (unbatched) for its own ratio.

Figures go to bench/results/serving-<time>.json. The client runs in this process and shares the
cores with the server it measures: on a 2-core machine every figure includes that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, cli, code_under_test, create_database, machine, print_context

console = Console()
MEASURED_PATHS = ["services/inference", "libs/core", "libs/ml"]
CONCURRENCY = (1, 16, 64, 256)
BATCHES = (1, 8)
N_FEATURES = 7


# ---- load --------------------------------------------------------------------------------------


async def _point(addr: str, model: str, concurrency: int, rows: int, seconds: float, warmup: float) -> dict[str, Any]:
    import tritonclient.grpc.aio as tga  # noqa: PLC0415

    x = np.random.default_rng(rows).normal(size=(rows, N_FEATURES)).astype(np.float32)
    client = tga.InferenceServerClient(addr)
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

    client = tga.InferenceServerClient(addr)
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


def sweep(name: str, addr: str, model: str, args: argparse.Namespace,
          points: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    out = []
    for c, b in points or [(c, b) for b in BATCHES for c in CONCURRENCY]:
        p = asyncio.run(_point(addr, model, c, b, args.seconds, args.warmup))
        console.print(f"  {name:<18} c={c:<4} batch={b}  {p['rps']:8.0f} req/s  p50 {p['p50_ms'] or 0:7.2f} ms  "
                      f"p99 {p['p99_ms'] or 0:7.2f} ms  errors {p['errors']}")
        out.append({"server": name, **p})
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
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for kind in ("triton", "kserve"):
        if kind in args.skip:
            continue
        try:
            with peers.serve(kind, onnx, "fraud", N_FEATURES, work / f"{kind}.log",
                             progress=lambda m: console.print(f"  {m}")) as addr:
                results += sweep(kind, addr, "fraud", args)
        except Exception as exc:  # noqa: BLE001 - one peer failing to install or start is reported, not fatal
            skipped[kind] = str(exc)[-600:]
            console.print(f"[yellow]{kind} not measured: {exc}[/]")

    results += measure_loopline(args, work)
    return {"benchmark": "serving", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "code": code,
            "params": {"seconds": args.seconds, "warmup": args.warmup, "concurrency": CONCURRENCY, "batch": BATCHES},
            "machine": machine(load_before),
            "method": "closed-loop tritonclient.grpc.aio callers in the bench process; servers measured one after "
                      "another; the same ONNX export everywhere (onnxruntime, 1 intra-op thread per call)",
            "not_measured": skipped, "points": results, "ratios": ratios(results)}


def measure_loopline(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Loopline inference as its own process against a local stack, batched, then unbatched."""
    from loopline.registry.v1 import registry_pb2 as rpb  # noqa: PLC0415
    from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415
    from loopline_core.registry import RegistryClient  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415
    from loopline_stack.stack import Stack, StackConfig  # noqa: PLC0415
    from loopline_testing.builders import register_signed_model, set_alias  # noqa: PLC0415

    results: list[dict[str, Any]] = []
    stack = Stack(StackConfig(state_dir=work / "stack", timeout_s=90), progress=lambda m: console.print(f"  {m}"))
    state = stack.up()
    try:
        suffix = uuid.uuid4().hex[:10]
        asyncio.run(ensure_topics(state.env["LOOPLINE_KAFKA_BOOTSTRAP"], TopicNamer(f"b{suffix}").platform_topics()))
        dsn = asyncio.run(create_database(state.env["LOOPLINE_POSTGRES_DSN"], f"b_{suffix}"))
        env = {**state.env, "LOOPLINE_POSTGRES_DSN": dsn, "LOOPLINE_TOPIC_PREFIX": f"b{suffix}"}
        for name, extra in (("loopline", {}), ("loopline-unbatched", {"LOOPLINE_INFERENCE_MAX_BATCH": "1"})):
            svc = ServiceSet(env, work / f"logs-{name}", {"inference": {"LOOPLINE_INFERENCE_RECONCILE_S": "2",
                                                                        "LOOPLINE_PREDICTION_LOG_WHEN_FULL": "drop",
                                                                        **extra}})
            svc.start(names=("registry", "inference"))
            try:
                registry = svc.addr("registry")

                async def setup(registry: str = registry) -> None:
                    rc = RegistryClient(registry)
                    await rc.apply_model(rpb.Model(name="fraud", variants=rpb.VariantPolicy(default_variant="onnx")),
                                         actor="bench")
                    await rc.close()
                    v = await register_signed_model(env, registry, "fraud", seed=1, exports=True)
                    await set_alias(registry, "fraud", "champion", v.version)

                if name == "loopline":
                    asyncio.run(setup())
                asyncio.run(_ready(svc.addr("inference"), "fraud", 60))
                points = None if name == "loopline" else [(64, 1), (64, 8)]
                results += sweep(name, svc.addr("inference"), "fraud", args, points)
            finally:
                svc.stop()
    finally:
        stack.down()
    return results


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
        unb = by.get(("loopline-unbatched", 64, b))
        ours = by.get(("loopline", 64, b))
        if unb and ours and unb["rps"]:
            out[f"batched/unbatched rps c=64 b={b}"] = round(ours["rps"] / unb["rps"], 2)
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
    p.add_argument("--skip", nargs="*", default=[], choices=["triton", "kserve"], help="peers to leave out")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be positive and --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    cli("serving", parse_args(argv), run, show, console)


if __name__ == "__main__":
    sys.exit(main())
