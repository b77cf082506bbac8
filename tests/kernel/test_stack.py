"""`loopline stack` as a user runs it: up, status, env, down, and its refusals; the durable broker mode."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loopline_core.kafka import ensure_topics
from loopline_stack import Stack, StackError
from loopline_stack.stack import StackConfig, StackState

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


# ---- durable broker mode: its own stack, the broker stopped and started again ---------------------------

TOPIC = "durable-check"
GROUP = "durable-group"
RECORDS = 2000


def test_durable_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOPLINE_STACK_DURABLE", "1")
    assert StackConfig.from_env(tmp_path).durable
    monkeypatch.delenv("LOOPLINE_STACK_DURABLE")
    assert not StackConfig.from_env(tmp_path).durable


async def _produce_and_commit_half(bootstrap: str) -> dict[TopicPartition, int]:
    """Write RECORDS records, then let a group consumer read about half of them and commit what it read."""
    await ensure_topics(bootstrap, [TOPIC], partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(TOPIC, str(i).encode(), key=str(i).encode()) for i in range(RECORDS)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=100)
    await consumer.start()
    try:
        next_offset: dict[TopicPartition, int] = {}
        async with asyncio.timeout(30):
            # Half the records, and some from each partition, so both partitions get a committed offset.
            while sum(next_offset.values()) < RECORDS // 2 or len(next_offset) < 2:
                for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                    next_offset[tp] = batch[-1].offset + 1
        await consumer.commit(next_offset)
    finally:
        await consumer.stop()
    return next_offset


async def _read_back(bootstrap: str) -> tuple[set[bytes], dict[TopicPartition, int | None]]:
    """Every record on the topic from the beginning, and the group's committed offsets."""
    tps = [TopicPartition(TOPIC, p) for p in range(2)]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        values: set[bytes] = set()
        async with asyncio.timeout(30):
            while len(values) < RECORDS:
                for batch in (await reader.getmany(timeout_ms=500)).values():
                    values.update(r.value for r in batch if r.value is not None)
    finally:
        await reader.stop()
    group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    await group.start()
    try:
        committed = {tp: await group.committed(tp) for tp in tps}
    finally:
        await group.stop()
    return values, committed


def _broker_refuses(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_durable_broker_keeps_records_and_group_offsets_across_a_restart(durable_stack: Stack) -> None:
    state = durable_stack.state()
    assert state is not None and state.durable
    bootstrap = state.env["LOOPLINE_KAFKA_BOOTSTRAP"]
    assert durable_stack.status()["kafka"]["storage"] == "s3://loopline-kafka/"
    committed_before = asyncio.run(_produce_and_commit_half(bootstrap))
    old = state.components["kafka"]

    durable_stack.stop_broker()
    assert _broker_refuses(bootstrap)
    stopped = durable_stack.status()["kafka"]
    assert stopped["pid"] == old.pid and not stopped["alive"] and not stopped["answering"]
    durable_stack.start_broker()
    with pytest.raises(StackError, match="already running"):
        durable_stack.start_broker()

    after = durable_stack.state()
    assert after is not None
    new = after.components["kafka"]
    assert new.pid != old.pid and new.ports == old.ports
    assert after.env["LOOPLINE_KAFKA_BOOTSTRAP"] == bootstrap
    assert all(s["alive"] and s["answering"] for s in durable_stack.status().values())
    values, committed_after = asyncio.run(_read_back(bootstrap))
    assert values == {str(i).encode() for i in range(RECORDS)}
    assert len(committed_before) == 2 and committed_after == committed_before

    # `down` stops every recorded process, the restarted broker included.
    pids = [c.pid for c in after.components.values()]
    assert durable_stack.down() == ["kafka", "s3", "postgres"]
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
