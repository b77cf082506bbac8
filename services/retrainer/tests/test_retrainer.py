"""Retrainer as its own process: alert -> wait for fresh labels -> request; results -> promotion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
from loopline.monitor.v1.events_pb2 import ArtifactRefused, DriftAlertRaised
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.registry import RegistryClient
from loopline_retrainer.domain.policy import Action, Candidate, decide, may_request
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, register_signed_model, set_alias


def _candidate(version: int = 2, *, passed: bool = True, against: int = 1, approval: bool = False,
               retired: bool = False) -> Candidate:
    return Candidate(version, retired, passed, "auc_pr 0.91 >= 0.90" if passed else "auc_pr 0.20 < 0.90",
                     against, approval)


def test_policy() -> None:
    assert decide(_candidate(1, against=0), None).action is Action.PROMOTE
    assert decide(_candidate(2, against=1), 1).promote
    failed = decide(_candidate(passed=False), 1)
    assert failed.action is Action.REJECT and "auc_pr 0.20 < 0.90" in failed.reason
    stale = decide(_candidate(3, against=1), 2)
    assert stale.action is Action.REJECT and "against v1" in stale.reason and "now v2" in stale.reason, \
        "a gate that compared against another champion is no evidence against this one"
    assert decide(_candidate(2, against=1), 2).action is Action.NOTHING
    assert decide(_candidate(2, against=1, retired=True), 1).action is Action.REJECT
    staged = decide(_candidate(2, against=1, approval=True), 1)
    assert staged.action is Action.STAGE and "approve" in staged.reason
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

    # an ArtifactRefused on the same topic is not a drift alert: no request follows from it
    refused = ArtifactRefused(metadata=metadata("test", "refused-1"), model_name="fraud", model_version=1,
                              service="inference", kind="tampered", reason="test")
    await publisher.publish(namer.alerts(), refused.SerializeToString(), key="fraud",
                            message_type="loopline.monitor.v1.ArtifactRefused")
    await label("e6")
    assert await requested() == requests, "another kind of alert starts no training"

    await _promotions(isolated, registry, publisher, namer, req.metadata.event_id)


async def _promotions(isolated: dict[str, str], registry: str, publisher: Publisher, namer: TopicNamer,
                      request_id: str) -> None:
    """Results -> decisions, each from the registry's record of the version and by compare-and-set."""
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    # the result message claims a great AUC for a version whose stored gate failed: the registry's record wins
    v2 = await register_signed_model(isolated, registry, "fraud", seed=2, gate_passed=False, gate_champion=1)
    await _result(publisher, namer, "result-2", v2.version, request_id, {"auc": 0.99})
    v3 = await register_signed_model(isolated, registry, "fraud", seed=3, gate_champion=1)
    await _result(publisher, namer, "result-3", v3.version, request_id, {"auc": 0.5})
    async with asyncio.timeout(30):
        while await _champion(registry) != v3.version:
            await asyncio.sleep(0.2)
    client = RegistryClient(registry)
    try:
        history = await client.history("fraud", "champion")
        assert [(c.from_version, c.to_version, c.actor) for c in history][:1] == [(1, v3.version, "retrainer")]
        assert json.loads(history[0].evidence)["caller"]["decision"] == "promote"
        assert (await client.get("fraud", v2.version)).stage == registry_pb2.STAGE_CANDIDATE, \
            "a version whose gate failed gets no alias"

        # an SRE rolls back to v1; a late result for v4, gated against v3, must not undo that
        await client.rollback("fraud", "champion", actor="sre", reason="bad canary", expected=v3.version)
        v4 = await register_signed_model(isolated, registry, "fraud", seed=4, gate_champion=v3.version)
        await _result(publisher, namer, "result-4", v4.version, "", {"auc": 0.99})
        await quiet(bootstrap, namer.training_results(), 3, wait_s=0,
                    settled={namer.group("retrainer-results"): [namer.training_results()]})
        assert await _champion(registry) == 1, "the rollback stands: v4's gate compared against v3"

        # a model whose policy wants a human: the gated version waits in staging
        await client.apply_model(registry_pb2.Model(name="fraud", requires_approval=True), actor="test")
        v5 = await register_signed_model(isolated, registry, "fraud", seed=5, gate_champion=1)
        await _result(publisher, namer, "result-5", v5.version, "", {"auc": 0.99})
        async with asyncio.timeout(30):
            while (await client.get("fraud", v5.version)).stage != registry_pb2.STAGE_STAGING:
                await asyncio.sleep(0.2)
        assert await _champion(registry) == 1
        await client.approve("fraud", v5.version, actor="ml-lead", reason="looked at the card", expected_champion=1)
        assert await _champion(registry) == v5.version
    finally:
        await client.close()


async def _result(publisher: Publisher, namer: TopicNamer, event_id: str, version: int, request_id: str,
                  metrics: dict[str, float]) -> None:
    result = TrainingCompleted(metadata=metadata("test", event_id), model_name="fraud", version=str(version),
                               succeeded=True, metrics=metrics, request_event_id=request_id)
    await publisher.publish(namer.training_results(), result.SerializeToString(), key="fraud")
