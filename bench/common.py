"""What every benchmark here does the same way: its own database, the code it measured, the
machine it ran on, where figures go, and a ``main`` that stops everything on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


async def create_database(dsn: str, name: str) -> str:
    """A fresh database on the stack's server; its DSN."""
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"create database {name}")
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + f"/{name}"


def git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=20)  # noqa: S607
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout


def code_under_test(paths: Sequence[str]) -> dict[str, Any]:
    """The commit, and which measured paths had uncommitted changes (other work may be in the tree)."""
    dirty = [line[3:] for line in git("status", "--porcelain", "--", *paths).splitlines() if line.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes_in_measured_paths": dirty}


def machine(load_before: Sequence[float]) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def print_context(out: Console, result: dict[str, Any]) -> None:
    """The load around the run and any uncommitted code it measured: how far to trust the figures."""
    m = result["machine"]
    out.print(f"load average (1 min) before/after: {m['load_avg_before'][0]:.1f}/{m['load_avg_after'][0]:.1f} "
              f"on {m['cpus']} cores")
    if result["code"]["uncommitted_changes_in_measured_paths"]:
        out.print(f"[yellow]measured with uncommitted changes in: "
                  f"{', '.join(result['code']['uncommitted_changes_in_measured_paths'])}[/]")


def save(result: dict[str, Any], name: str) -> Path:
    """``bench/results/<name>-<utc time>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = result["measured_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # as Ctrl-C: the finally blocks stop what we started


def cli(name: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], dict[str, Any]],
        show: Callable[[dict[str, Any]], None], console: Console) -> None:
    """Run, show and save one benchmark; an interruption or a failure is one line and a non-zero exit."""
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        result = run(args)
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted; everything started was stopped[/]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line for the person running it; the logs have the rest
        console.print(f"[red]{name} benchmark failed: {exc}[/]")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    show(result)
    console.print(f"figures written to {save(result, result.get('name', name)).relative_to(ROOT)}")


class BareProcess:
    """A benchmark's peer (``python -m <module> <args>``) as its own OS process, as each platform service is,
    stopped by its own pid."""

    def __init__(self, module: str, args: Sequence[str], log: Path) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"bare loop exited ({self.proc.returncode}): {' | '.join(tail)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
