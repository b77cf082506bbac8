"""Retrainer as its own process: alert -> wait for fresh labels -> request; results -> promotion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
from loopline.monitor.v1.events_pb2 import DriftAlertRaised
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_retrainer.domain.policy import decide, may_request
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, register_signed_model, set_alias


def test_policy() -> None:
    assert decide({"auc": 0.7}, has_champion=False, min_gain=0.0).promote
    assert decide({"auc": 0.9, "champion_auc": 0.6}, has_champion=True, min_gain=0.01).promote
    lose = decide({"auc": 0.6, "champion_auc": 0.9}, has_champion=True, min_gain=0.0)
    assert not lose.promote and "0.600 < champion 0.900" in lose.reason
    assert not decide({"auc": 0.9}, has_champion=True, min_gain=0.0).promote
    assert not may_request(5.0, None, in_flight_timeout_s=60, cooldown_s=10)[0]
    assert not may_request(None, 5.0, in_flight_timeout_s=60, cooldown_s=10)[0]
    assert may_request(None, 50.0, in_flight_timeout_s=60, cooldown_s=10)[0]


async def _champion(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        r = await registry_pb2_grpc.RegistryServiceStub(ch).ResolveAlias(
            registry_pb2.ResolveAliasRequest(model_name="fraud", alias="champion"))
        return int(r.version.version)


async def test_alert_to_request_to_promotion(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                             publisher: Publisher) -> None:
    svc = services("registry", "retrainer", env={"retrainer": {
        "LOOPLINE_RETRAINER_FRESH_LABELS": "5", "LOOPLINE_RETRAINER_COOLDOWN_S": "0"}})
    registry = svc.addr("registry")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    v1 = await register_signed_model(isolated, registry, "fraud", seed=1)
    await set_alias(registry, "fraud", "champion", v1.version)

    labels = namer.labels("transactions")
    # Committed offsets say the retrainer's handlers ran for every alert and label published so far,
    # so what is on the requests topic then is all it will ever publish for them.
    handled = {namer.group("retrainer"): [namer.alerts()], namer.group("retrainer-labels"): [labels]}

    async def requested(expected: int = 0) -> list[TrainingRequested]:
        return [TrainingRequested.FromString(r.value) for r in
                await quiet(bootstrap, namer.training_requests(), expected, wait_s=0, settled=handled)]

    async def label(event_id: str) -> None:
        await publisher.publish(labels, json.dumps({"event_id": event_id, "label": 0}).encode(),
                                content_type="application/json")

    for i in range(3):
        await label(f"old-{i}")  # before the drift: not fresh
    assert await requested() == []

    alert = DriftAlertRaised(metadata=metadata("test", "alert-1"), model_name="fraud", model_version=1,
                             statistic="psi", threshold=0.25, feature_scores={"amount": 0.9}, max_score=0.9)
    await publisher.publish(namer.alerts(), alert.SerializeToString(), key="fraud")
    await publisher.publish(namer.alerts(), alert.SerializeToString(), key="fraud")  # redelivered
    assert await requested() == [], "waits for fresh labels"
    log = svc.running["retrainer"].log.read_text()
    assert log.count('"message": "retraining once fresh labels arrive"') == 1, "it is waiting, once"

    for i in range(4):
        await label(f"e{i}")
    await label("e0")  # a redelivered label counts once
    assert await requested() == [], "4 of 5 fresh labels (the 3 older ones do not count): still waiting"
    await label("e4")
    requests = await requested(1)
    assert len(requests) == 1
    await label("e5")
    assert await requested() == requests, "one request per alert"
    req = requests[0]
    assert req.model_name == "fraud" and "amount=0.90" in req.reason and req.params["window_rows"] == "3000"

    v2 = await register_signed_model(isolated, registry, "fraud", seed=2)
    won = TrainingCompleted(metadata=metadata("test", "result-2"), model_name="fraud", version=str(v2.version),
                            succeeded=True, metrics={"auc": 0.93, "champion_auc": 0.41},
                            request_event_id=req.metadata.event_id)
    await publisher.publish(namer.training_results(), won.SerializeToString(), key="fraud")
    async with asyncio.timeout(30):
        while await _champion(registry) != v2.version:
            await asyncio.sleep(0.2)

    v3 = await register_signed_model(isolated, registry, "fraud", seed=3)
    lost = TrainingCompleted(metadata=metadata("test", "result-3"), model_name="fraud", version=str(v3.version),
                             succeeded=True, metrics={"auc": 0.5, "champion_auc": 0.93})
    await publisher.publish(namer.training_results(), lost.SerializeToString(), key="fraud")
    async with grpc.aio.insecure_channel(registry) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        async with asyncio.timeout(30):
            while True:
                try:
                    r = await stub.ResolveAlias(registry_pb2.ResolveAliasRequest(model_name="fraud",
                                                                                 alias="challenger"))
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)
    assert r.version.version == v3.version
    assert await _champion(registry) == v2.version, "a losing challenger never becomes champion"
