"""`loopline demo`: the stack, the eight services, the scenario, live progress, the report."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from loopline.monitor.v1.events_pb2 import AlertRaised
from loopline_core.auth import client_env
from loopline_core.kafka import TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_stack import Stack, StackError
from loopline_stack.services import ServiceSet
from loopline_stack.stack import StackConfig
from rich.console import Console
from rich.live import Live
from rich.table import Table

from loopline_cli.demo import models, report
from loopline_cli.demo.observe import Observer
from loopline_cli.demo.scenario import ScenarioConfig, ScenarioResult, run_scenario
from loopline_cli.demo.traffic import Traffic

console = Console(stderr=True)
DRIFT_SHARE = 0.5  # models/fraud.yaml monitoring.drift_share
MONITOR_ENV = {"LOOPLINE_MONITOR_WINDOWS": '["count:500/100"]', "LOOPLINE_MONITOR_REPORT_EVERY": "0"}


def service_env() -> dict[str, dict[str, str]]:
    """The demo's settings beside the defaults: windows of 500 predictions (a few minutes of traffic must show
    the new champion's own windows), Evidently's report only for windows that cross a drift check (each is
    ~4 MB of HTML); the retraining policy comes from models/fraud.yaml."""
    return {"monitor": MONITOR_ENV}


def _view(result_started: float, phase: str, scenario: dict[str, object]) -> Table:
    t = Table(title=f"Loopline demo - {phase}", show_header=False)
    t.add_row("elapsed", f"{time.time() - result_started:5.1f}s")
    for k, v in scenario.items():
        t.add_row(k, str(v))
    return t


async def _demo(stack_env: dict[str, str], services: ServiceSet, cfg: ScenarioConfig, out_dir: Path) -> int:
    namer = TopicNamer()
    phase = {"now": "starting"}
    holder: dict[str, object] = {}
    live_parts: list[tuple[Traffic, Observer]] = []

    def progress(msg: str) -> None:
        phase["now"] = msg
        if not console.is_terminal:
            console.print(f"[{time.strftime('%H:%M:%S')}] {msg}")

    task = asyncio.create_task(run_scenario(
        stack_env["LOOPLINE_KAFKA_BOOTSTRAP"], namer, f"127.0.0.1:{services.ports['feature']}",
        f"127.0.0.1:{services.ports['inference']}", cfg, progress,
        on_start=lambda traffic, observer: live_parts.append((traffic, observer))))
    started = time.time()
    last_print = 0.0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while not task.done():
            await asyncio.sleep(0.25)
            if live_parts:
                holder.update(_counters(*live_parts[0]))
            if console.is_terminal:
                live.update(_view(started, phase["now"], holder))
            elif time.time() - last_print > 10:
                last_print = time.time()
                console.print(json.dumps({"phase": phase["now"], **{k: str(v) for k, v in holder.items()}}))
    result = task.result()
    return await _finish(result, stack_env, f"127.0.0.1:{services.ports['registry']}", out_dir)


def _counters(traffic: Traffic, observer: Observer) -> dict[str, object]:
    s, o = traffic.stats, observer.seen
    last = o.timeline[-1].text if o.timeline else ""
    return {"transactions produced": s.produced, "malformed sent": s.malformed, "dead-lettered": o.dead_letters,
            "labels delivered": s.labels, "scored": s.scored, "serving version": s.serving_version or "-",
            "versions registered": ", ".join(f"v{v}" for v in o.versions) or "-", "alerts": o.alerts,
            "champion": f"v{o.champion}" if o.champion else "-", "last event": last}


async def _finish(result: ScenarioResult, stack_env: dict[str, str], registry_addr: str, out_dir: Path) -> int:
    store = ObjectStore(stack_env["LOOPLINE_S3_ENDPOINT"], stack_env["LOOPLINE_S3_ACCESS_KEY"],
                        stack_env["LOOPLINE_S3_SECRET_KEY"])
    s, o = result.traffic.stats, result.observer.seen
    stamp = time.strftime('%Y%m%d-%H%M%S')
    links = await _evidently_reports(store, o.raised, out_dir, stamp)
    lat = sorted(x.latency_ms for x in s.scores)
    summary = {
        "completed": result.completed, "wall time (s)": round(time.time() - result.started, 1),
        "transactions": s.produced, "malformed -> dead letters": f"{s.malformed} -> {o.dead_letters}",
        "labels": s.labels, "scored": s.scored, "scored by version": dict(sorted(s.by_version.items())),
        "versions registered": o.versions, "final serving version": result.final_version,
        "alerts": dict(Counter(f"{a.kind} v{a.model_version}" for a in o.raised)),
        "retrain decisions": [f"{d.decision} ({d.trigger})" for d in o.retrains],
        "client latency p50/p99 (ms)": f"{lat[len(lat) // 2]:.1f} / {lat[int(len(lat) * 0.99)]:.1f}" if lat else "-",
    }
    section, per_version = await models.section(registry_addr, store, "fraud")
    summary["gates"] = {v: d["gate"] for v, d in per_version.items()}
    path = report.write(out_dir / f"loopline-demo-{stamp}.html", s, o, result.started, result.drift_at, summary,
                        DRIFT_SHARE, section, links)
    (out_dir / f"{path.stem}.versions.json").write_text(json.dumps(per_version, indent=1))
    await store.put_bytes("loopline-reports", f"demo/{path.name}", path.read_bytes(), content_type="text/html")
    table = Table(title="Loopline demo summary", show_header=False)
    for k, v in summary.items():
        table.add_row(k, str(v))
    console.print(table)
    for m in o.timeline:
        console.print(f"  {m.at - result.started:6.1f}s  {m.text}")
    console.print(f"[bold]report:[/] {path.resolve()}")
    print(path.resolve())
    return 0 if result.completed else 1


async def _evidently_reports(store: ObjectStore, raised: list[AlertRaised], out_dir: Path,
                             stamp: str) -> dict[str, str]:
    """Copy Evidently's report of each alerting window beside the demo report; s3 URI -> relative link."""
    links: dict[str, str] = {}
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    for a in raised:
        if not a.report_uri or a.report_uri in links:
            continue
        bucket, key = a.report_uri.removeprefix("s3://").split("/", 1)
        if not await store.exists(bucket, key):  # rendered off the monitor's consumer path: not there yet
            continue
        name = f"loopline-demo-{stamp}.evidently-v{a.model_version}-{len(links) + 1}.html"
        await asyncio.to_thread((out_dir / name).write_bytes, await store.get_bytes(bucket, key))
        links[a.report_uri] = name
    return links


def run_demo(minutes: float = 5.0, state_dir: Path | None = None) -> int:
    t0 = time.monotonic()
    cfg = StackConfig.from_env(state_dir or Path(".loopline/demo"))
    stack = Stack(cfg, progress=lambda m: console.print(f"[cyan]•[/] {m}"))
    try:
        state = stack.up()
    except StackError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    os.environ.update(client_env(state.env))  # the demo calls the services as the stack's operator
    services = ServiceSet(state.env, cfg.state_dir.parent / "demo-logs", service_env())
    try:
        console.print("[cyan]•[/] starting the eight services as separate processes")
        services.start(progress=lambda m: console.print(f"[cyan]•[/] {m}"))
        budget = minutes * 60 - (time.monotonic() - t0) - 30
        return asyncio.run(_demo(state.env, services, ScenarioConfig(deadline_s=max(budget, 60)), Path("reports")))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - report any failure in one line, then clean up
        console.print(f"[bold red]demo failed:[/] {exc} (service logs in {cfg.state_dir.parent / 'demo-logs'})")
        return 1
    finally:
        console.print("[cyan]•[/] stopping services and the stack")
        services.stop()
        stack.down(keep_data=False) if "--keep" not in sys.argv else None
        console.print(f"demo took {time.monotonic() - t0:.0f}s")
