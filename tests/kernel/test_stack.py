"""`loopline stack` as a user runs it: up, status, env, down, and its refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
from loopline_stack.stack import StackState

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "loopline_cli"]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


def test_up_status_env_down_leaves_nothing_running(tmp_path: Path) -> None:
    state_dir = ROOT / ".loopline" / f"cli-{os.getpid()}"
    up = _cli("stack", "up", "--state-dir", str(state_dir))
    assert up.returncode == 0, up.stderr
    state = StackState.load(state_dir)
    assert state is not None
    pids = [c.pid for c in state.components.values()]
    try:
        status = _cli("stack", "status", "--json", "--state-dir", str(state_dir))
        assert status.returncode == 0, status.stderr
        parsed = json.loads(status.stdout)
        assert set(parsed) == {"kafka", "postgres", "s3"}
        assert all(s["alive"] and s["answering"] for s in parsed.values())
        env = _cli("stack", "env", "--state-dir", str(state_dir))
        lines = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
        for var in ("LOOPLINE_KAFKA_BOOTSTRAP", "LOOPLINE_POSTGRES_DSN", "LOOPLINE_S3_ENDPOINT",
                    "LOOPLINE_S3_ACCESS_KEY", "LOOPLINE_S3_SECRET_KEY", "LOOPLINE_SIGNING_KEY"):
            assert lines[var], var
        again = _cli("stack", "up", "--state-dir", str(state_dir))
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = _cli("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert not state_dir.exists()
    assert _cli("stack", "status", "--state-dir", str(state_dir)).returncode == 1


def test_a_taken_port_is_a_one_line_error_and_nothing_is_left_running(tmp_path: Path) -> None:
    state_dir = ROOT / ".loopline" / f"cli-port-{os.getpid()}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        res = _cli("stack", "up", "--state-dir", str(state_dir), env={"LOOPLINE_STACK_POSTGRES_PORT": str(port)})
    assert res.returncode == 1
    assert f"port {port} for postgres is already in use" in res.stderr
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_a_missing_binary_is_a_one_line_error(tmp_path: Path) -> None:
    state_dir = ROOT / ".loopline" / f"cli-bin-{os.getpid()}"
    res = _cli("stack", "up", "--state-dir", str(state_dir), env={"CALF_TANSU_BIN": str(tmp_path / "no-such-tansu")})
    assert res.returncode == 1
    assert "broker binary" in res.stderr
    assert StackState.load(state_dir) is None


def test_a_component_that_never_answers_is_stopped(tmp_path: Path) -> None:
    # A "broker" that runs but never speaks Kafka: the stack must time out, say so, and stop everything.
    fake = tmp_path / "silent-broker"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    state_dir = ROOT / ".loopline" / f"cli-slow-{os.getpid()}"
    res = _cli("stack", "up", "--state-dir", str(state_dir),
               env={"CALF_TANSU_BIN": str(fake), "LOOPLINE_STACK_TIMEOUT_S": "3"})
    assert res.returncode == 1
    assert "kafka did not answer within 3s" in res.stderr
    state = StackState.load(state_dir)
    assert state is not None
    for comp in state.components.values():
        assert not psutil.pid_exists(comp.pid) or psutil.Process(comp.pid).status() == psutil.STATUS_ZOMBIE
