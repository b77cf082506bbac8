"""Upstream traffic for the demo and end-to-end tests: transactions, delayed labels, scoring calls.

Each transaction is scored before it is published, as a card authorisation would be: the model's
feature vector from the feature service (``GetOnlineFeatures`` with the transaction as the request
row), then ``ModelInfer`` over the Open Inference Protocol with Triton's own async client. No feature
code runs here.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from loopline.feature.v1 import feature_pb2, feature_pb2_grpc
from loopline_core import grpcx
from loopline_core.events import timestamp
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.telemetry import inject_metadata
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from tritonclient.utils import InferenceServerException

from loopline_cli.demo.synth import TransactionStream

VIEW = "transactions"
_tracer = trace.get_tracer("loopline.demo")


@dataclass
class Scored:
    at: float
    version: int
    score: float
    label: int
    latency_ms: float
    drifted: bool


@dataclass
class TrafficStats:
    produced: int = 0
    malformed: int = 0
    labels: int = 0
    scored: int = 0
    unscored: int = 0
    stale: int = 0
    by_version: collections.Counter[int] = field(default_factory=collections.Counter)
    scores: list[Scored] = field(default_factory=list)
    serving_version: int = 0


class Traffic:
    def __init__(self, bootstrap: str, namer: TopicNamer, feature_addr: str, inference_addr: str,
                 stream: TransactionStream, *, rate: float = 60.0, label_delay_s: float = 3.0,
                 malformed_every: int = 200, model: str = "fraud") -> None:
        self.namer = namer
        self.stream = stream
        self.rate = rate
        self.label_delay_s = label_delay_s
        self.malformed_every = malformed_every
        self.model = model
        self.stats = TrafficStats()
        self._publisher = Publisher(bootstrap, client_id="demo-producer")
        self._feature_channel = grpcx.channel(feature_addr)  # the operator's LOOPLINE_AUTH_* credentials
        self._features = feature_pb2_grpc.FeatureServiceStub(self._feature_channel)
        self._triton = grpcx.with_auth(triton.InferenceServerClient(inference_addr))
        self._labels: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        self._stop = asyncio.Event()
        self._last_seen: dict[str, float] = {}
        self.freshness_wait_s = 3.0

    async def run(self) -> None:
        await self._publisher.start()
        try:
            await asyncio.gather(self._produce(), self._release_labels())
        finally:
            await self._publisher.stop()
            await self._feature_channel.close()
            await self._triton.close()

    def stop(self) -> None:
        self._stop.set()

    async def _produce(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        scoring: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(256)
        while not self._stop.is_set():
            txn, label = self.stream.next()
            previous = self._last_seen.get(txn["customer_id"], 0.0)
            self._last_seen[txn["customer_id"]] = max(previous, float(txn["ts"]))
            await slots.acquire()
            # one trace per transaction, as an upstream application would have: the event it publishes
            # (traceparent in the record's headers) and the scoring call (in the gRPC metadata)
            with _tracer.start_as_current_span("authorise transaction", kind=SpanKind.PRODUCER,
                                               attributes={"loopline.event_id": txn["event_id"]}):
                task = asyncio.create_task(self._score(txn, label, previous, self.stream.drifted))
                task.add_done_callback(self._done(scoring, slots))
                scoring.add(task)
                await self._publisher.publish(self.namer.raw("transactions"), json.dumps(txn).encode(),
                                              key=txn["customer_id"], content_type="application/json")
            self.stats.produced += 1
            self._labels.append((time.monotonic() + self.label_delay_s,
                                 {"event_id": txn["event_id"], "label": label, "ts": txn["ts"]}))
            if self.malformed_every and self.stats.produced % self.malformed_every == 0:
                bad = self.stream.malformed()
                await self._publisher.publish(self.namer.raw("transactions"), json.dumps(bad).encode(),
                                              key=str(bad.get("customer_id", "?")), content_type="application/json")
                self.stats.malformed += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*scoring, return_exceptions=True)

    @staticmethod
    def _done(tasks: set[asyncio.Task[None]], slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        return done

    async def _release_labels(self) -> None:
        while not self._stop.is_set() or self._labels:
            now = time.monotonic()
            while self._labels and self._labels[0][0] <= now:
                _, label = self._labels.popleft()
                await self._publisher.publish(self.namer.labels("transactions"), json.dumps(label).encode(),
                                              key=label["event_id"], content_type="application/json")
                self.stats.labels += 1
            if self._stop.is_set():
                break
            await asyncio.sleep(0.05)

    async def _fresh_features(self, txn: dict[str, Any], previous: float) -> feature_pb2.FeatureRow:
        """The customer's aggregates as of this transaction, once they include its previous one.

        The demo compresses days into seconds, so a customer's next transaction can arrive before the
        pipeline has logged the last one; in real time it never would. Waiting (briefly) for that
        keeps served features equal to the offline ones the model was trained on.
        """
        scored = feature_pb2.RequestRow(numbers={"amount": float(txn["amount"])},
                                        strings={"merchant_category": txn["merchant_category"]})
        request = feature_pb2.GetOnlineFeaturesRequest(feature_view=VIEW, entity_ids=[txn["customer_id"]],
                                                       as_of=timestamp(float(txn["ts"])), request=[scored])
        deadline = time.monotonic() + self.freshness_wait_s
        while True:
            row: feature_pb2.FeatureRow = (await self._features.GetOnlineFeatures(request, timeout=5)).rows[0]
            fresh = row.event_time.ToNanoseconds() / 1e9 >= previous - 1e-3 or previous >= float(txn["ts"])
            if fresh or time.monotonic() > deadline:
                self.stats.stale += 0 if fresh else 1
                return row
            await asyncio.sleep(0.05)

    async def _score(self, txn: dict[str, Any], label: int, previous: float, drifted: bool) -> None:
        try:
            row = await self._fresh_features(txn, previous)
            started = time.perf_counter()
            x = np.asarray([row.values], dtype=np.float32)
            inp = triton.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = await self._triton.infer(self.model, [inp], outputs=[triton.InferRequestedOutput("score")],
                                              parameters={"entity_ids": txn["customer_id"]},
                                              request_id=txn["event_id"], client_timeout=5,
                                              headers=dict(inject_metadata()))
        except (InferenceServerException, grpc.aio.AioRpcError):
            self.stats.unscored += 1  # no champion yet, or a service restarting: the event still flows
            return
        version = int(result.get_response().model_version)
        score = float(result.as_numpy("score")[0][0])
        self.stats.scored += 1
        self.stats.by_version[version] += 1
        self.stats.serving_version = version
        self.stats.scores.append(Scored(time.time(), version, score, label,
                                        (time.perf_counter() - started) * 1000, drifted))
