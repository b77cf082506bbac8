"""The prediction log: bounded, counted when full, retried then counted on failure, spread over
partitions, and drained on SIGTERM (every answered request's rows reach the topic)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline_core import grpcx
from loopline_core.kafka import Publisher, TopicNamer, ensure_topics
from loopline_inference.adapters.prediction_log import PredictionLog, Row
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, read_fenced, register_signed_model, set_alias
from prometheus_client import REGISTRY


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _rows(model: str, n: int, start: int = 0) -> list[Row]:
    return [Row(model, 1, f"r{i}", f"r{i}", ["a", "b"], np.array([i, i + 1], np.float32),
                np.array([0.5], np.float32), 1.0, f"e{i}", 0.0) for i in range(start, start + n)]


@pytest.fixture
async def model(bootstrap: str, namer: TopicNamer) -> str:
    """A model name of this test's own (its metrics start at zero), its predictions topic created."""
    name = f"m{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [namer.predictions(name)], partitions=3)
    return name


async def test_drop_counts_what_does_not_fit_and_close_publishes_what_is_queued(
        publisher: Publisher, namer: TopicNamer, model: str, bootstrap: str) -> None:
    plog = PredictionLog(publisher, namer, capacity=5, when_full="drop")
    plog.start()
    await plog.record(_rows(model, 20))  # queued without a pause: the sender cannot make room meanwhile
    assert _count("loopline_inference_prediction_log_dropped_total", model=model, reason="full") == 15
    await plog.close()
    assert _count("loopline_inference_prediction_log_sent_total", model=model) == 5
    got = sorted(PredictionLogged.FromString(r.value).metadata.event_id
                 for r in await read_fenced(bootstrap, namer.predictions(model)))
    assert got == [f"r{i}" for i in range(5)]
    await plog.record(_rows(model, 1, 99))
    assert _count("loopline_inference_prediction_log_dropped_total", model=model, reason="closed") == 1


class _Stuck:
    """A publisher whose sends wait until released (a broker that stopped answering), then go through."""

    def __init__(self, real: Publisher) -> None:
        self.real = real
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def publish_traced(self, topic: str, records: Any, **kw: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await self.real.publish_traced(topic, records, **kw)


async def test_block_waits_for_room_and_counts_what_found_none_in_time(
        publisher: Publisher, namer: TopicNamer, model: str, bootstrap: str) -> None:
    stuck = _Stuck(publisher)
    patient = PredictionLog(stuck, namer, capacity=2, when_full="block", block_s=60, batch_size=1)
    patient.start()
    await patient.record(_rows(model, 1))
    async with asyncio.timeout(30):
        await stuck.entered.wait()  # the sender holds row 0; the queue has room for 2
    await patient.record(_rows(model, 2, 1))
    waiting = asyncio.create_task(patient.record(_rows(model, 1, 3)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done(), "a full queue makes the caller wait (back-pressure)"
    stuck.release.set()
    async with asyncio.timeout(30):
        await waiting
    await patient.close()
    assert _count("loopline_inference_prediction_log_dropped_total", model=model, reason="timeout") == 0
    assert _count("loopline_inference_prediction_log_sent_total", model=model) == 4

    stuck = _Stuck(publisher)
    hasty = PredictionLog(stuck, namer, capacity=2, when_full="block", block_s=0.05, batch_size=1)
    hasty.start()
    await hasty.record(_rows(model, 1, 10))
    async with asyncio.timeout(30):
        await stuck.entered.wait()
    await hasty.record(_rows(model, 3, 11))  # 2 fit, 1 waits its 50 ms in vain
    assert _count("loopline_inference_prediction_log_dropped_total", model=model, reason="timeout") == 1
    stuck.release.set()
    await hasty.close()
    got = sorted(PredictionLogged.FromString(r.value).metadata.event_id
                 for r in await read_fenced(bootstrap, namer.predictions(model)))
    assert got == sorted(["r0", "r1", "r2", "r3", "r10", "r11", "r12"])


async def test_failed_publishes_are_retried_then_counted(namer: TopicNamer, model: str, bootstrap: str) -> None:
    down = Publisher(bootstrap, client_id="test-down")
    await down.start()
    await down.stop()  # every publish raises
    plog = PredictionLog(down, namer, retries=2, retry_backoff_s=0.01)
    plog.start()
    await plog.record(_rows(model, 3))
    await plog.close()
    assert _count("loopline_inference_prediction_log_failed_total", model=model) == 3
    assert _count("loopline_inference_prediction_log_sent_total", model=model) == 0


async def test_rows_spread_over_partitions_and_sigterm_publishes_every_answered_row(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    # The sender lingers for a batch it never fills: rows wait in the process until SIGTERM.
    svc = services("registry", "inference", env={"inference": {
        "LOOPLINE_PREDICTION_LOG_LINGER_S": "600", "LOOPLINE_PREDICTION_LOG_BATCH": "100000",
        "LOOPLINE_PREDICTION_LOG_CAPACITY": "100000", "LOOPLINE_INFERENCE_RECONCILE_S": "0.5"}})
    v1 = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=1)
    await set_alias(svc.addr("registry"), "fraud", "champion", v1.version)
    x = np.random.default_rng(0).normal(size=(1, len(FEATURES))).astype(np.float32)
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    try:
        async with asyncio.timeout(60):
            while not await client.is_model_ready("fraud"):
                await asyncio.sleep(0.2)
        answered: list[str] = []

        async def caller(k: int) -> None:
            for i in range(25):
                rid = f"q-{k}-{i}"
                res = await client.infer("fraud", [inp], request_id=rid)
                answered.append(res.get_response().id)

        await asyncio.gather(*[caller(k) for k in range(8)])
    finally:
        await client.close()
    assert len(answered) == 200
    topic = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"]).predictions("fraud")
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    assert await read_fenced(bootstrap, topic) == [], "still queued in the process"

    await asyncio.to_thread(svc.stop)  # SIGTERM: the service drains its log before its publisher stops
    records = await read_fenced(bootstrap, topic)
    logged = [PredictionLogged.FromString(r.value) for r in records]
    assert sorted(p.request_id for p in logged) == sorted(answered), "every answered request logged, once"
    assert {r.key for r in records} == {p.request_id.encode() for p in logged}, "keyed by request"
    assert len({r.partition for r in records}) == 3, "spread over every partition"


async def test_each_record_carries_its_own_calls_trace_context(
        publisher: Publisher, namer: TopicNamer, model: str, bootstrap: str) -> None:
    # rows of three calls sent in one batch: each record continues its own call's trace, or none
    parents = ["00-" + f"{n:032x}" + "-" + f"{n:016x}" + "-01" for n in (11, 12)]
    rows = [dataclasses.replace(r, traceparent=parents[i]) if i < 2 else r for i, r in enumerate(_rows(model, 3))]
    plog = PredictionLog(publisher, namer, batch_size=10)
    plog.start()
    await plog.record(rows)
    await plog.close()
    got = {PredictionLogged.FromString(r.value).metadata.event_id: dict(r.headers)
           for r in await read_fenced(bootstrap, namer.predictions(model))}
    assert got["r0"]["traceparent"] == parents[0].encode()
    assert got["r1"]["traceparent"] == parents[1].encode()
    assert "traceparent" not in got["r2"]
    assert all(h["x-loopline-type"] == b"loopline.inference.v1.PredictionLogged" for h in got.values())
