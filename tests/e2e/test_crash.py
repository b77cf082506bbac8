"""Crash at any point loses nothing and duplicates nothing in the sinks keyed by event id.

While valid transactions flow at a steady rate, ingest, validator and feature are each SIGKILLed
once, one at a time, at random points of the stream (seeded: ``LOOPLINE_CRASH_SEED`` replays a
run; the seed is in every failure message) and started again. At the end the valid topic holds
every event id, and the feature offline log and ingest's seen events hold each exactly once.

``LOOPLINE_CRASH_EVENTS`` (default 20,000) and ``LOOPLINE_CRASH_RATE`` (events a second, default
250) size the stream.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from loopline_core.kafka import TopicNamer
from loopline_testing.flow import Fleet, SteadyProducer, check_once, event_ids, in_thread, seeded, settle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

N = int(os.environ.get("LOOPLINE_CRASH_EVENTS", "20000"))
RATE = float(os.environ.get("LOOPLINE_CRASH_RATE", "250"))
SERVICES = ("ingest", "validator", "feature")


async def test_sigkill_each_stage_mid_stream_loses_and_duplicates_nothing(isolated: dict[str, str],
                                                                          tmp_path: Path) -> None:
    seed, rng = seeded("LOOPLINE_CRASH_SEED")
    print(f"LOOPLINE_CRASH_SEED={seed} (events {N}, rate {RATE:.0f}/s)")  # shown with -s or on failure
    tag = f"seed {seed}"
    bootstrap, dsn = isolated["LOOPLINE_KAFKA_BOOTSTRAP"], isolated["LOOPLINE_POSTGRES_DSN"]
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    ds = "transactions"
    ids = event_ids(f"crash{seed}", N)
    began = time.monotonic()

    with Fleet(isolated, tmp_path / "logs") as fleet:
        for name in ("feature", "ingest", "validator"):
            await in_thread(fleet.start, name)
        producer = SteadyProducer(bootstrap, namer.raw(ds), ids, RATE)
        stream = asyncio.create_task(producer.run())

        # One kill per stage, in a random order, each at a random point of its own third of the stream,
        # so each restarted process is consuming again before the next kill.
        order = rng.sample(SERVICES, len(SERVICES))
        points = [rng.uniform(0.05 + 0.3 * i, 0.25 + 0.3 * i) for i in range(len(order))]
        kills: list[str] = []
        for name, point in zip(order, points, strict=True):
            while producer.progress < point and not stream.done():
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0, 0.5))  # land anywhere in a batch, not at a tick edge
            assert not stream.done(), f"{tag}: the stream ended before the {name} kill; lower the rate"
            [victim] = fleet.of(name)
            await in_thread(fleet.kill, victim)
            assert not victim.alive(), f"{tag}: {victim.label} survived SIGKILL"
            kills.append(f"{name} pid {victim.proc.pid} at {len(producer.acked)} sent")
            await in_thread(fleet.start, name)
        await stream
        streamed = time.monotonic() - began

        # Wait on conditions: the last sink has every id (or stops growing), then every group committed
        # its input to the end, so nothing is still in flight when we count.
        tally = await settle(bootstrap, dsn, namer, ds, N)
        assert not fleet.dead(), f"{tag}: a service died on its own: {fleet.dead()}"
    where = f"{tag}; kills {kills}; streamed in {streamed:.0f}s, settled in {time.monotonic() - began:.0f}s"
    print(where, tally.describe())
    assert len(producer.acked) == N, where
    check_once(tally, set(ids), where)
