"""Scaling the validator's consumer group 1 -> 3 -> 1 mid-stream loses nothing.

Ingest, one validator and feature run while valid transactions flow. Two more validator processes
join the group (each is assigned a partition and handles records), then two of the three leave, one
drained by SIGTERM and one SIGKILLed (which two, and which gets which signal, is seeded:
``LOOPLINE_REBALANCE_SEED``). The valid topic must hold every event id at least once, and the
feature offline log and ingest's seen events each exactly once.

``LOOPLINE_REBALANCE_EVENTS`` (default 15,000) and ``LOOPLINE_REBALANCE_RATE`` (default 250 a
second) size the stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from loopline_core.kafka import TopicNamer
from loopline_testing.flow import (
    Fleet,
    Member,
    SteadyProducer,
    assignments,
    check_once,
    end_offsets,
    event_ids,
    held,
    in_thread,
    logged,
    metric,
    metrics_port,
    seeded,
    settle,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

N = int(os.environ.get("LOOPLINE_REBALANCE_EVENTS", "15000"))
RATE = float(os.environ.get("LOOPLINE_REBALANCE_RATE", "250"))


async def test_validator_group_scales_1_3_1_mid_stream_without_loss(isolated: dict[str, str],
                                                                    tmp_path: Path) -> None:
    seed, rng = seeded("LOOPLINE_REBALANCE_SEED")
    print(f"LOOPLINE_REBALANCE_SEED={seed} (events {N}, rate {RATE:.0f}/s)")
    tag = f"seed {seed}"
    bootstrap, dsn = isolated["LOOPLINE_KAFKA_BOOTSTRAP"], isolated["LOOPLINE_POSTGRES_DSN"]
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    ds = "transactions"
    ingested = namer.ingested(ds)
    every = frozenset(f"{tp.topic}/{tp.partition}" for tp in await end_offsets(bootstrap, ingested))
    ids = event_ids(f"rebalance{seed}", N)

    with Fleet(isolated, tmp_path / "logs") as fleet:
        for name in ("feature", "ingest", "validator"):
            await in_thread(fleet.start, name)
        [first] = fleet.of("validator")
        producer = SteadyProducer(bootstrap, namer.raw(ds), ids, RATE)
        stream = asyncio.create_task(producer.run())

        # 1 -> 3: two more validators join while events flow.
        await _progress(producer, stream, rng.uniform(0.08, 0.15))
        extras = list(await asyncio.gather(in_thread(fleet.start, "validator"), in_thread(fleet.start, "validator")))
        validators = [first, *extras]

        async def three_way() -> bool:
            now = [held(m.log) for m in validators]
            return all(now) and frozenset().union(*now) == every and sum(map(len, now)) == len(every)

        assert await wait_until(three_way, timeout=60, interval=0.5), \
            f"{tag}: the group did not spread over 3 members: {_assigned(validators)}"
        ports = {m.label: metrics_port(m.log) for m in validators}

        async def all_working() -> bool:
            return all(_handled(ports[m.label], ingested) > 0 for m in validators)

        assert await wait_until(all_working, timeout=60, interval=0.5), \
            f"{tag}: not every validator handled records: {_handled_by(validators, ports, ingested)}"
        handled_at_3 = _handled_by(validators, ports, ingested)

        # 3 -> 1: one leaves by SIGTERM (drains, commits, leaves the group), one is SIGKILLed.
        await _progress(producer, stream, max(producer.progress + 0.1, 0.45))
        assert not stream.done(), f"{tag}: the stream ended before the scale-down; lower the rate"
        termed, killed = rng.sample(validators, 2)
        [survivor] = [m for m in validators if m not in (termed, killed)]
        await in_thread(fleet.stop, termed, signal.SIGTERM, 30.0)
        await asyncio.sleep(rng.uniform(0, 2))
        await in_thread(fleet.kill, killed)
        scaled_down_at = len(producer.acked)
        assert logged(termed.log, "drained and stopped"), f"{tag}: {termed.label} did not drain on SIGTERM"

        async def one_holds_all() -> bool:
            return held(survivor.log) == every

        assert await wait_until(one_holds_all, timeout=60, interval=0.5), \
            f"{tag}: {survivor.label} did not take every partition back: {_assigned(validators)}"
        taken_back_at = len(producer.acked)
        await stream

        tally = await settle(bootstrap, dsn, namer, ds, N)
        assert not fleet.dead(), f"{tag}: a service died on its own: {fleet.dead()}"
        handled_at_end = _handled(ports[survivor.label], ingested)

    where = (f"{tag}; handled at 3 members {handled_at_3}; {termed.label} SIGTERM, {killed.label} SIGKILL after "
             f"{scaled_down_at} sent; {survivor.label} held all again after {taken_back_at} sent and handled "
             f"{handled_at_end:.0f} in all")
    print(where, tally.describe())
    assert len(producer.acked) == N, where
    check_once(tally, set(ids), where)


async def _progress(producer: SteadyProducer, stream: asyncio.Task[None], point: float) -> None:
    while producer.progress < point and not stream.done():
        await asyncio.sleep(0.02)


def _assigned(members: list[Member]) -> dict[str, list[list[str]]]:
    return {m.label: [sorted(a) for a in assignments(m.log)] for m in members}


def _handled(port: int, topic: str) -> float:
    return metric(port, "loopline_bus_consumed_total", topic=topic, outcome="ok")


def _handled_by(members: list[Member], ports: dict[str, int], topic: str) -> dict[str, float]:
    out = {}
    for m in members:
        try:
            out[m.label] = _handled(ports[m.label], topic)
        except OSError:
            out[m.label] = -1.0
    return out

