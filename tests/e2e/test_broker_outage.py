"""A 20-second broker outage mid-stream: the services stay up, say they are not ready, recover, lose nothing.

On a durable stack of its own (the session's broker is shared by other tests and keeps topics only in
memory), ingest, validator and feature run while a producer streams valid transactions, retrying
every send the broker does not acknowledge. The broker is stopped for 20 s and started again on the
same port and storage. Every service process must survive, answer 503 on ``/readyz`` during the
outage, answer 200 again after it, and every acknowledged event must reach the valid topic and be in
the feature offline log and ingest's seen events exactly once.

``LOOPLINE_OUTAGE_EVENTS`` (default 10,000), ``LOOPLINE_OUTAGE_RATE`` (default 200 a second) and
``LOOPLINE_OUTAGE_S`` (default 20) size it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopline_core.kafka import TopicNamer, ensure_topics
from loopline_stack import Stack
from loopline_testing.flow import (
    Fleet,
    Member,
    SteadyProducer,
    check_once,
    event_ids,
    in_thread,
    logged,
    metrics_port,
    readyz,
    settle,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

N = int(os.environ.get("LOOPLINE_OUTAGE_EVENTS", "10000"))
RATE = float(os.environ.get("LOOPLINE_OUTAGE_RATE", "200"))
OUTAGE_S = float(os.environ.get("LOOPLINE_OUTAGE_S", "20"))
SERVICES = ("feature", "ingest", "validator")


@dataclass
class Probe:
    """``/readyz`` of each service, polled all along: (seconds since start, service, status)."""

    ports: dict[str, int]
    began: float
    seen: list[tuple[float, str, int]]

    async def run(self) -> None:
        while True:
            for name, port in self.ports.items():
                status = await asyncio.to_thread(readyz, port)
                self.seen.append((time.monotonic() - self.began, name, status))
            await asyncio.sleep(0.25)

    def during(self, name: str, start: float, end: float) -> list[int]:
        return [s for t, n, s in self.seen if n == name and start <= t <= end]


async def test_services_ride_out_a_broker_outage_without_loss(durable_stack: Stack, tmp_path: Path) -> None:
    state = durable_stack.state()
    assert state is not None and state.durable
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = {**state.env, "LOOPLINE_TOPIC_PREFIX": prefix}
    bootstrap, dsn = env["LOOPLINE_KAFKA_BOOTSTRAP"], env["LOOPLINE_POSTGRES_DSN"]
    namer = TopicNamer(prefix)
    await ensure_topics(bootstrap, namer.platform_topics())
    ds = "transactions"
    ids = event_ids(f"outage-{prefix}", N)
    began = time.monotonic()

    with Fleet(env, tmp_path / "logs") as fleet:
        for name in SERVICES:
            await in_thread(fleet.start, name)
        members: dict[str, Member] = {m.name: m for m in fleet.members}
        probe = Probe({n: metrics_port(m.log) for n, m in members.items()}, began, [])
        assert await wait_until(lambda: _all_ready(probe), timeout=30, interval=0.5), "not ready at start"
        probing = asyncio.create_task(probe.run())
        producer = SteadyProducer(bootstrap, namer.raw(ds), ids, RATE, retry=True)
        stream = asyncio.create_task(producer.run())

        while producer.progress < 0.3 and not stream.done():
            await asyncio.sleep(0.05)
        assert not stream.done(), "the stream ended before the outage; lower the rate"
        outage = await _outage(durable_stack, fleet, producer, began)
        recovered = await wait_until(lambda: _all_ready(probe), timeout=90, interval=0.5)
        recovered_at = time.monotonic() - began
        await stream
        streamed_at = time.monotonic() - began
        tally = await settle(bootstrap, dsn, namer, ds, N)
        settled_at = time.monotonic() - began
        probing.cancel()
        dead = fleet.dead()
        logs = {m.name: _log_summary(m) for m in fleet.members}

    statuses = {n: sorted(set(probe.during(n, outage.down_at, outage.up_at))) for n in SERVICES}
    where = (f"services up at {outage.started_at:.1f}s, stream done at {streamed_at:.1f}s, settled at "
             f"{settled_at:.1f}s; outage {outage.down_at:.1f}s..{outage.up_at:.1f}s (broker answering at "
             f"{outage.answered_at:.1f}s), "
             f"all ready again at {recovered_at:.1f}s; /readyz statuses during the outage {statuses}; acknowledged "
             f"{len(producer.acked)} (while the broker was down {outage.acked_while_down}), failed sends retried "
             f"{producer.failed_sends}; logs {logs}")
    print(where, tally.describe())
    # Every check runs and every failure is reported together: a readiness defect must not hide a loss.
    problems = []
    if not all(outage.alive.values()) or dead:
        problems.append(f"a service died: {outage.alive} {dead}")
    not_ready = [n for n in SERVICES if 503 not in statuses[n]]
    if not_ready:
        problems.append(f"{not_ready} never answered 503 on /readyz while the broker was down")
    if not recovered:
        problems.append(f"not every service was ready again after the outage: {probe.seen[-len(SERVICES):]}")
    if len(producer.acked) != N:
        problems.append(f"only {len(producer.acked)} of {N} sends were acknowledged")
    try:
        check_once(tally, set(producer.acked), where)
    except AssertionError as exc:
        problems.append(str(exc).split(": " + where, 1)[0])
    assert not problems, f"{problems}: {where}; {tally.describe()}"


@dataclass
class Outage:
    started_at: float
    down_at: float
    up_at: float
    answered_at: float
    acked_while_down: int
    alive: dict[str, bool]


async def _outage(stack: Stack, fleet: Fleet, producer: SteadyProducer, began: float) -> Outage:
    """Stop the broker, keep it down for OUTAGE_S, start it again (same port, same storage)."""
    down_at = time.monotonic() - began
    await in_thread(stack.stop_broker)
    acked_before = len(producer.acked)
    await asyncio.sleep(OUTAGE_S)  # the outage itself, not a wait for a result
    alive = {m.label: m.alive() for m in fleet.members}
    up_at = time.monotonic() - began
    acked_while_down = len(producer.acked) - acked_before
    await in_thread(stack.start_broker)
    return Outage(producer.started_at - began, down_at, up_at, time.monotonic() - began, acked_while_down, alive)


async def _all_ready(probe: Probe) -> bool:
    statuses = await asyncio.gather(*[asyncio.to_thread(readyz, p) for p in probe.ports.values()])
    return all(s == 200 for s in statuses)


def _log_summary(member: Member) -> dict[str, int]:
    """How often a service logged the lines that tell how it rode out the outage."""
    return {msg: len(logged(member.log, msg)) for msg in (
        "transient failure: partition paused, will retry", "commit failed; the batch will be redelivered",
        "commit lost to a rebalance", "batch failed in the delivery layer", "partitions assigned")}
