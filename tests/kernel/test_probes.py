"""Probes that never lie, against the real broker: ``/readyz`` answers 503 until every subscription's
consumer has joined its group and received an assignment (an empty one too: a replica beyond the
partition count is a ready standby), 200 after; ``/healthz`` answers all along. Consumer lag per
partition and dead letters by reason reach ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from loopline_core.kafka import Item, Publisher, Record, TopicNamer, ensure_topics
from loopline_core.service import Runtime, start_runtime, watch_lag
from loopline_core.settings import CoreSettings
from loopline_testing.flow import metric, readyz, wait_until


def _settings(bootstrap: str, namer: TopicNamer) -> CoreSettings:
    # Connections the bus never uses still need a value: CoreSettings has no defaults for them.
    return CoreSettings(kafka_bootstrap=bootstrap, postgres_dsn="postgresql://unused/none",  # type: ignore[arg-type]
                        s3_endpoint="unused:9000", s3_access_key="unused", s3_secret_key="unused",  # noqa: S106 - never used
                        bind_host="127.0.0.1", metrics_port=0, topic_prefix=namer.prefix, log_format="text",
                        retry_initial_backoff_s=0.05, retry_max_backoff_s=0.2)


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _decode(record: Record) -> dict[str, Any]:
    value = json.loads(record.value)
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


@contextlib.asynccontextmanager
async def _runtime(name: str, bootstrap: str, namer: TopicNamer) -> AsyncIterator[Runtime]:
    rt = await start_runtime(name, _settings(bootstrap, namer))
    try:
        yield rt
    finally:
        await rt.bus.stop()


@pytest.fixture
async def topic(bootstrap: str) -> str:
    """A topic with one partition, so a second member of the group gets an empty assignment."""
    name = f"probes-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [name], partitions=1)
    return name


async def test_readyz_is_503_until_the_group_is_joined_and_200_after_even_for_a_standby(
        bootstrap: str, namer: TopicNamer, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        pass

    async with _runtime("probes-a", bootstrap, namer) as a, _runtime("probes-b", bootstrap, namer) as b:
        a.subscribe([topic], _decode, handle, group=group)
        b.subscribe([topic], _decode, handle, group=group)
        for rt in (a, b):  # connected to the broker, subscribed, not started: no group join yet
            assert _status(rt.metrics_port, "/healthz") == 200
            assert readyz(rt.metrics_port) == 503
            assert metric(rt.metrics_port, "loopline_ready") == 0
        await a.bus.start()
        assert await wait_until(lambda: _ready(a), timeout=60, interval=0.2), "a never became ready"
        assert readyz(b.metrics_port) == 503
        await b.bus.start()  # joins: one partition for two members, so one of them stands by, assigned nothing
        assert await wait_until(lambda: _both_ready(a, b), timeout=60, interval=0.2), "not both ready after the join"
        owned = [len(rt.bus.deliveries[0].consumer.assignment()) for rt in (a, b)]
        assert sorted(owned) == [0, 1]
        assert metric(a.metrics_port, "loopline_ready") == 1
        assert metric(a.metrics_port, "loopline_bus_assigned", subscription=a.bus.deliveries[0].name) == 1


async def _ready(rt: Runtime) -> bool:
    return await asyncio.to_thread(readyz, rt.metrics_port) == 200


async def _both_ready(a: Runtime, b: Runtime) -> bool:
    return await _ready(a) and await _ready(b)


async def test_lag_per_partition_and_dead_letters_by_reason_reach_metrics(
        bootstrap: str, namer: TopicNamer, topic: str, publisher: Publisher) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    release = asyncio.Event()
    handled: list[int] = []

    async def handle(items: list[Item[dict[str, Any]]]) -> None:
        await release.wait()  # hold the first batch: the consumer's position stays behind the high watermark
        handled.extend(int(i.value["i"]) for i in items)

    values = [json.dumps({"i": i}).encode() for i in range(20)] + [b"not json"]
    await publisher.publish_batch(topic, [("k", v) for v in values], content_type="application/json")
    async with _runtime("probes-lag", bootstrap, namer) as rt:
        rt.lag_interval_s = 0.2
        rt.subscribe([topic], _decode, handle, group=group, max_records=5)
        await rt.bus.start()
        lag = asyncio.create_task(watch_lag(rt))
        try:
            labels = {"group": group, "topic": topic, "partition": "0"}
            assert await wait_until(lambda: _metric_is(rt, "loopline_bus_lag", 16, labels), timeout=60,
                                    interval=0.2), "lag of 21 records minus a batch of 5 never showed"
            release.set()
            assert await wait_until(lambda: _metric_is(rt, "loopline_bus_lag", 0, labels), timeout=60,
                                    interval=0.2), "lag never went back to 0"
            assert sorted(handled) == list(range(20))
            dead = {"topic": topic, "reason": "INVALID_ARGUMENT"}
            assert await wait_until(lambda: _metric_is(rt, "loopline_bus_dead_lettered_total", 1, dead),
                                    timeout=30, interval=0.2), "the undecodable record was not counted by reason"
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag


async def _metric_is(rt: Runtime, name: str, value: float, labels: dict[str, str]) -> bool:
    return await asyncio.to_thread(metric, rt.metrics_port, name, **labels) == value
