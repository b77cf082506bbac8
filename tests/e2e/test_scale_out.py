"""``loopline run validator --replicas 3`` scales one service out, and SIGTERM drains it.

The CLI itself is started as a process (and stopped by its pid) with the variables a service gets
from the local stack. The validator's consumer group must become Stable with three members (as the
broker describes it) while the three replicas hold every partition of the ingested topic between
them (their ``replica``-tagged ``partitions assigned`` lines); then envelopes are produced to that
topic (what ingest would emit) and every event id must reach the valid topic exactly once, every
replica having handled some (each replica's own metrics port, from its ``starting`` line).

A second batch is still being produced when the CLI gets SIGTERM: every replica must drain and log
so, none may outlive the CLI, the CLI must exit 0, and what was validated must be committed. A
second ``--replicas 2`` run then takes over from the committed offsets: every id of both batches
on the valid topic exactly once (nothing lost, nothing redone). That CLI is SIGKILLed: it forwards
nothing, yet its replicas (told by the kernel's parent-death signal) must drain, and the group's
offsets end at the end of the topic.

``LOOPLINE_SCALE_OUT_EVENTS`` (default 3,000 a batch) sizes the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_stack import procs
from loopline_stack.services import ServiceSet
from loopline_testing.flow import (
    committed,
    end_offsets,
    event_ids,
    in_thread,
    log_entries,
    metric,
    sample,
    topic_event_ids,
    topic_size,
    transaction,
    wait_count,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

N = int(os.environ.get("LOOPLINE_SCALE_OUT_EVENTS", "3000"))
REPLICAS = 3
LOOPLINE = Path(sys.executable).parent / "loopline"
DS = "transactions"


async def test_three_validator_replicas_share_the_group_validate_each_event_once_and_drain(
        isolated: dict[str, str], tmp_path: Path) -> None:
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    ingested, valid, group = namer.ingested(DS), namer.valid(DS), namer.group("validator")
    every = frozenset(f"{tp.topic}/{tp.partition}" for tp in await end_offsets(bootstrap, ingested))
    # The validator calls neither the registry nor the feature service: their addresses stay unused.
    env = ServiceSet(isolated, tmp_path, ports={"registry": 0, "feature": 0}).env_for("validator")
    first, second = event_ids("scaleout-a", N), event_ids("scaleout-b", N)

    # Run 1: three replicas; the first batch is validated exactly once, spread over all of them.
    async with _Cli(env, REPLICAS, tmp_path / "run1.log") as cli:
        await cli.spread(bootstrap, group, every)
        await _produce(bootstrap, ingested, first)
        await _validated_once(bootstrap, valid, first)
        ports = _metrics_ports(cli.log)
        assert sorted(ports) == list(range(REPLICAS)), f"not every replica logged its metrics port: {ports}"

        def handled() -> dict[int, float]:
            return {i: metric(port, "loopline_bus_consumed_total", topic=ingested, outcome="ok")
                    for i, port in ports.items()}

        async def counted_all() -> bool:  # a batch's records are counted once it is handled, maybe after
            return sum(handled().values()) >= N  # the valid topic already shows them

        await wait_until(counted_all, timeout=30, interval=0.2)
        by_replica = handled()
        print(f"{REPLICAS} replicas {cli.replicas}, metrics ports {ports}, handled {by_replica}")
        assert sum(by_replica.values()) == N, f"the replicas handled {by_replica} of {N}"
        assert all(n > 0 for n in by_replica.values()), f"a replica handled nothing: {by_replica}"
        # The second batch is still arriving when the CLI is told to stop: the replicas drain what they
        # hold and commit it; the rest waits on the topic for the next run.
        stream = asyncio.create_task(_produce(bootstrap, ingested, second, chunk=100, pause_s=0.1))
        assert await wait_until(lambda: _more_than(bootstrap, valid, N + 300), timeout=60, interval=0.1), \
            f"the second batch did not start arriving on {valid}: {cli.tail()}"
        await cli.terminate()
        await stream
    in_flight = await committed(bootstrap, group, ingested)
    assert sum(in_flight.values()) > N + 300, f"the drain did not commit what was validated: {in_flight}"

    # Run 2: two replicas take over from the committed offsets: nothing lost, nothing validated twice.
    # This time the CLI is SIGKILLed: it forwards nothing, and its replicas must drain all the same.
    async with _Cli(env, 2, tmp_path / "run2.log") as cli:
        await cli.spread(bootstrap, group, every)
        await _validated_once(bootstrap, valid, first + second)
        await cli.kill()
    ends = await end_offsets(bootstrap, ingested)
    done = await committed(bootstrap, group, ingested)
    print(f"committed at the first stop {in_flight}, at the second {done}, end offsets {ends}")
    assert done == ends, f"committed {done} != end offsets {ends}: a restart would redo or lose records"


class _Cli:
    """``loopline run validator --replicas N`` as a process of its own, stopped by its pid."""

    def __init__(self, env: dict[str, str], replicas: int, log: Path) -> None:
        self.env, self.n, self.log = env, replicas, log
        self.replicas: dict[int, int] = {}
        self.children: dict[int, psutil.Process] = {}

    async def __aenter__(self) -> _Cli:
        self.pid, self.ct = procs.spawn([str(LOOPLINE), "run", "validator", "--replicas", str(self.n)], self.log,
                                        env=self.env)
        proc = procs.ours(self.pid, self.ct)
        assert proc is not None, self.tail()
        self.proc = proc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await in_thread(procs.stop, self.pid, self.ct)

    async def spread(self, bootstrap: str, group: str, every: frozenset[str]) -> None:
        """Wait until the broker sees the group stable with N members and the N replicas hold every partition."""
        async def spread_out() -> bool:
            assert procs.ours(self.pid, self.ct) is not None, f"the CLI exited: {self.tail()}"
            state, members = await _members(bootstrap, group)
            held = _held(self.log)
            return (state == "Stable" and len(members) == self.n and len(held) == self.n
                    and all(held.values()) and frozenset().union(*held.values()) == every)

        assert await wait_until(spread_out, timeout=60, interval=0.5), \
            f"group {group} did not spread over {self.n} members: broker says {await _members(bootstrap, group)}, " \
            f"replicas hold {_held(self.log)}; {self.tail()}"
        self.replicas = _replica_pids(self.log)
        assert sorted(self.replicas) == list(range(self.n)), self.tail()
        self.children = {i: psutil.Process(p) for i, p in self.replicas.items()}
        assert {c.pid for c in self.children.values()} == {c.pid for c in self.proc.children()}, \
            "the replicas are the CLI's own children"

    async def terminate(self) -> None:
        """SIGTERM the CLI: it exits 0 once every replica drained (each logs so) and none outlives it."""
        self.proc.send_signal(signal.SIGTERM)
        rc = await in_thread(self.proc.wait, 90)
        assert rc == 0, f"the CLI exited {rc}: {self.tail()}"
        assert not [i for i, c in self.children.items() if _alive(c)], "a replica outlived the CLI"
        drained = Counter(e.get("replica") for e in log_entries(self.log) if e.get("message") == "drained and stopped")
        assert drained == Counter(range(self.n)), f"not every replica drained once: {drained}; {self.tail()}"
        assert "every replica drained and stopped" in self.log.read_text()

    async def kill(self) -> None:
        """SIGKILL the CLI: the kernel sends each replica SIGTERM (parent-death signal); they drain all the same."""
        self.proc.send_signal(signal.SIGKILL)
        await in_thread(self.proc.wait, 30)

        async def replicas_gone() -> bool:
            return not [c for c in self.children.values() if _alive(c)]

        assert await wait_until(replicas_gone, timeout=90, interval=0.5), \
            f"replicas outlived the SIGKILLed CLI: {[c.pid for c in self.children.values() if _alive(c)]}"
        drained = Counter(e.get("replica") for e in log_entries(self.log) if e.get("message") == "drained and stopped")
        assert drained == Counter(range(self.n)), f"not every replica drained once: {drained}; {self.tail()}"

    def tail(self) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])


def _alive(proc: psutil.Process) -> bool:
    """Still running (an orphan nobody reaped yet counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _validated_once(bootstrap: str, valid: str, ids: list[str]) -> None:
    arrived = await wait_count(lambda: topic_size(bootstrap, valid), len(ids), timeout=60)
    counts = await topic_event_ids(bootstrap, valid)
    where = f"{arrived} records on {valid}, {len(counts)} ids"
    assert set(counts) == set(ids), f"missing {len(set(ids) - set(counts))}, e.g. {sample(set(ids) - set(counts))}, " \
                                    f"unknown {sample(set(counts) - set(ids))}: {where}"
    twice = {i: n for i, n in counts.items() if n != 1}
    assert not twice, f"{len(twice)} validated more than once, e.g. {sample(twice)}: {where}"


async def _members(bootstrap: str, group: str) -> tuple[str, list[str]]:
    """The group's state and member ids as the broker describes them. (The local broker, Tansu 0.6,
    answers DescribeGroups with its members but empty assignments: which partitions each holds is
    read from the replicas' own ``partitions assigned`` log lines.)"""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    [described] = response.groups
    error, _group_id, state, _ptype, _protocol, members = described[:6]
    assert error == 0, f"DescribeGroups {group}: error {error}"
    return state, [m[0] for m in members]


def _held(log: Path) -> dict[int, frozenset[str]]:
    """Replica index -> the partitions it holds now by its log (its last assignment, unless revoked since)."""
    out: dict[int, frozenset[str]] = {}
    for e in log_entries(log):
        if "replica" not in e:
            continue
        if e.get("message") == "partitions assigned":
            out[int(e["replica"])] = frozenset(str(p) for p in e.get("partitions", ()))
        elif e.get("message") == "partitions revoked":
            out[int(e["replica"])] = frozenset()
    return out


async def _more_than(bootstrap: str, topic: str, n: int) -> bool:
    return await topic_size(bootstrap, topic) > n


async def _produce(bootstrap: str, topic: str, ids: list[str], chunk: int = 0, pause_s: float = 0.0) -> None:
    """What ingest emits for each id: an EventIngested envelope around a valid transaction, keyed by customer;
    ``chunk`` records at a time with ``pause_s`` between (all at once by default)."""
    records = []
    for n, event_id in enumerate(ids):
        txn = transaction(event_id, n)
        env = EventIngested(metadata=metadata("test", event_id), dataset=DS, source="test",
                            content_type="application/json", payload=json.dumps(txn).encode())
        records.append((txn["customer_id"], env.SerializeToString()))
    pub = Publisher(bootstrap, client_id="scale-out-test")
    await pub.start()
    try:
        step = chunk or len(records)
        for i in range(0, len(records), step):
            await pub.publish_batch(topic, records[i:i + step], message_type="loopline.ingest.v1.EventIngested")
            await asyncio.sleep(pause_s)
    finally:
        await pub.stop()


def _replica_pids(log: Path) -> dict[int, int]:
    """Replica index -> pid, from the CLI's ``validator: 3 replicas: 0 (pid 123, ...), ...`` line."""
    text = log.read_text(errors="replace")
    return {int(i): int(p) for i, p in re.findall(r"(\d+) \(pid (\d+),", text)}


def _metrics_ports(log: Path) -> dict[int, int]:
    """Replica index -> the metrics port it logged at start."""
    return {int(e["replica"]): int(e["metrics_port"]) for e in log_entries(log)
            if e.get("message") == "starting" and "replica" in e}
