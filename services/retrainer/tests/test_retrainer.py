"""Retrainer as its own process: the retraining policy (alerts, label volume, schedule -> requested, waiting or
skipped, each decision recorded and shown by `loopline retrain history`); results -> promotion."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from loopline.monitor.v1.events_pb2 import AlertRaised, AlertResolved, ArtifactRefused, DriftAlertRaised
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core import grpcx
from loopline_core.events import metadata, timestamp
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.registry import RegistryClient
from loopline_ml import spec as specs
from loopline_retrainer.domain.policy import Action, Candidate, decide, may_request
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, register_signed_model, set_alias

LOOPLINE = str(Path(sys.executable).parent / "loopline")
ONSET = 1_790_000_000


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
    async with grpcx.channel(addr) as ch:
        r = await registry_pb2_grpc.RegistryServiceStub(ch).ResolveAlias(
            registry_pb2.ResolveAliasRequest(model_name="fraud", alias="champion"))
        return int(r.version.version)


def _specs(into: Path) -> Path:
    """Model specs for this test: fraud's, with retraining policies small enough to watch, and three more models."""
    base = yaml.safe_load((specs.default_dir() / "fraud.yaml").read_text())
    policies = {
        "fraud": {"triggers": [{"kind": "feature_drift"}, {"kind": "performance", "min_severity": "critical"}],
                  "cooldown_s": 0, "mode": "warm_start",
                  "window": {"from_onset": True, "min_rows": 5, "max_rows": 900}},
        "cool": {"triggers": [{"kind": "feature_drift"}], "cooldown_s": 3600, "window": {"min_rows": 0}},
        "volume": {"triggers": [{"kind": "label_volume", "labels": 4}], "cooldown_s": 0},
        "sched": {"triggers": [{"kind": "schedule", "every_s": 1}], "cooldown_s": 0}}
    for name, policy in policies.items():
        (into / f"{name}.yaml").write_text(yaml.safe_dump({**base, "name": name, "retraining": policy}))
    return into


def _raised(event_id: str, kind: str = "feature_drift", severity: str = "warning", *, model: str = "fraud",
            episode: str = "", repeat: int = 1) -> AlertRaised:
    return AlertRaised(metadata=metadata("test", event_id), model_name=model, model_version=1, kind=kind,
                       severity=severity, summary="6 of 8 columns drifted", window="count:1000/250",
                       onset=timestamp(ONSET), metric="drift_share", value=0.75, threshold=0.5,
                       report_uri=f"s3://loopline-reports/{event_id}.html", repeat=repeat,
                       episode_id=episode or event_id)


@dataclass
class Scene:
    """The retrainer under test, and what the test sends it and reads from it."""

    isolated: dict[str, str]
    publisher: Publisher

    def __post_init__(self) -> None:
        self.namer = TopicNamer(self.isolated["LOOPLINE_TOPIC_PREFIX"])
        self.bootstrap = self.isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
        self.cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}, **self.isolated}
        self.labels = self.namer.labels("transactions")
        # Committed offsets say the retrainer's handlers ran for every alert, label and result published so
        # far, so what is on the requests topic then is all it will ever publish for them (the schedule aside).
        self.handled = {self.namer.group("retrainer"): [self.namer.alerts()],
                        self.namer.group("retrainer-labels"): [self.labels],
                        self.namer.group("retrainer-results"): [self.namer.training_results()]}

    async def requested(self, model: str = "fraud") -> list[TrainingRequested]:
        records = await quiet(self.bootstrap, self.namer.training_requests(), 0, wait_s=0, settled=self.handled)
        return [r for r in (TrainingRequested.FromString(r.value) for r in records) if r.model_name == model]

    async def label(self, event_id: str) -> None:
        await self.publisher.publish(self.labels, json.dumps({"event_id": event_id, "label": 0}).encode(),
                                     content_type="application/json")

    async def alert(self, msg: AlertRaised | AlertResolved | DriftAlertRaised | ArtifactRefused) -> None:
        await self.publisher.publish(self.namer.alerts(), msg.SerializeToString(), key=msg.model_name,
                                     message_type=msg.DESCRIPTOR.full_name)

    async def history(self, model: str, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(LOOPLINE, "retrain", "history", model, *args, env=self.cli_env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def decisions(self, model: str, count: int = 0) -> list[dict[str, Any]]:
        """At least ``count`` decisions of ``model``, newest first, as ``loopline retrain history`` shows them."""
        async with asyncio.timeout(60):
            while len(rows := json.loads(await self.history(model, "--json"))) < count:
                await asyncio.sleep(0.5)
        return list(rows)


async def test_the_retraining_policy_decides_and_every_decision_is_recorded(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher, tmp_path: Path) -> None:
    svc = services("registry", "retrainer", env={"retrainer": {
        "LOOPLINE_MODELS_DIR": str(_specs(tmp_path)), "LOOPLINE_RETRAINER_MODELS": '["fraud", "volume", "sched"]',
        "LOOPLINE_RETRAINER_SCHEDULE_CHECK_S": "0.5"}})
    registry = svc.addr("registry")
    v1 = await register_signed_model(isolated, registry, "fraud", seed=1)
    await set_alias(registry, "fraud", "champion", v1.version)
    scene = Scene(isolated, publisher)

    for i in range(3):
        await scene.label(f"old-{i}")  # before the alert: not fresh
    assert await scene.requested() == []

    await scene.alert(_raised("alert-1", episode="ep-1"))
    await scene.alert(_raised("alert-1", episode="ep-1"))  # redelivered
    assert await scene.requested() == [], "waits for labels since the alert"
    for i in range(4):
        await scene.label(f"e{i}")
    await scene.label("e0")  # a redelivered label counts once
    assert await scene.requested() == [], "4 of 5 labels since the alert (the 3 older ones do not count): waiting"
    await scene.label("e4")
    [req] = await scene.requested()
    assert req.trigger == "feature_drift" and req.window_start.ToNanoseconds() == ONSET * 10**9
    assert req.warm_start_version == v1.version and req.params["window_rows"] == "900"
    evidence = json.loads(req.evidence)
    assert evidence["alert_id"] == "alert-1" and evidence["severity"] == "warning"
    assert evidence["report_uri"] == "s3://loopline-reports/alert-1.html" and evidence["metric"] == "drift_share"
    assert "6 of 8 columns drifted" in req.reason and f"warm start from champion v{v1.version}" in req.reason

    await _skips(scene, req, tmp_path)
    await _label_volume_cooldown_and_schedule(scene)
    await _promotions(isolated, registry, publisher, scene.namer, req.metadata.event_id)


async def _skips(scene: Scene, req: TrainingRequested, specs_dir: Path) -> None:
    """Each skipped, and why: a repeat of the episode, a kind not configured, too mild, one already in flight."""
    await scene.alert(_raised("alert-2", episode="ep-1", repeat=2))
    await scene.alert(_raised("alert-3", "latency", "critical"))
    await scene.alert(_raised("alert-4", "performance", "warning"))
    await scene.alert(_raised("alert-5", episode="ep-5"))
    await scene.alert(DriftAlertRaised(metadata=metadata("test", "alert-6"), model_name="fraud", model_version=1,
                                       statistic="psi", threshold=0.25, feature_scores={"amount": 0.9}, max_score=0.9))
    # not alerts to act on: skipped by their type header, no decision at all
    await scene.alert(AlertResolved(metadata=metadata("test", "resolved-1"), model_name="fraud",
                                    kind="feature_drift", episode_id="ep-1"))
    await scene.alert(ArtifactRefused(metadata=metadata("test", "refused-1"), model_name="fraud", model_version=1,
                                      service="inference", kind="tampered", reason="test"))
    await scene.alert(_raised("alert-7", model="nospec"))
    await scene.label("e5")
    assert await scene.requested() == [req], "one request for the episode"

    rows = await scene.decisions("fraud", 7)
    assert [(r["decision"], r["cause_event_id"]) for r in rows][::-1] == [
        ("waiting", "alert-1"), ("requested", "alert-1"), ("skipped", "alert-2"), ("skipped", "alert-3"),
        ("skipped", "alert-4"), ("skipped", "alert-5"), ("skipped", "alert-6")]
    why = {r["cause_event_id"]: r["reason"] for r in rows if r["decision"] == "skipped"}
    assert "repeat 2 of alert episode ep-1" in why["alert-2"] and "latency is not configured" in why["alert-3"]
    assert "below critical" in why["alert-4"] and "in flight" in why["alert-5"] and "in flight" in why["alert-6"]
    made = next(r for r in rows if r["decision"] == "requested")
    assert made["request_id"] == req.metadata.event_id and made["mode"] == "warm_start"
    assert made["window_start"] and made["evidence"]["alert_id"] == "alert-1"
    assert [r["reason"] for r in await scene.decisions("nospec", 1)] == [
        f"model 'nospec' has no spec ({specs_dir / 'nospec.yaml'} does not exist)"]
    table = await scene.history("fraud", "--limit", "3")
    assert "retraining decisions for fraud" in table
    assert "alert-6" in table and "alert-5" in table and "alert-1" not in table, "newest first, --limit 3"


async def _label_volume_cooldown_and_schedule(scene: Scene) -> None:
    # label volume: 4 labels since the last run (none yet); later, with that run in flight, skipped once
    [by_volume] = await scene.requested("volume")
    assert by_volume.trigger == "label_volume" and not by_volume.HasField("window_start")
    volume = await scene.decisions("volume", 2)
    assert [(r["decision"], r["reason"].startswith("a training run is already in flight")) for r in volume][::-1] \
        == [("requested", False), ("skipped", True)]

    # the cool-down: a run finished, the next alert comes too soon
    await scene.alert(_raised("cool-1", model="cool"))
    [cool] = await scene.requested("cool")
    assert cool.trigger == "feature_drift" and cool.warm_start_version == 0, "mode full"
    done = TrainingCompleted(metadata=metadata("test", "cool-result"), model_name="cool", succeeded=False,
                             error="test", request_event_id=cool.metadata.event_id)
    await scene.publisher.publish(scene.namer.training_results(), done.SerializeToString(), key="cool")
    await quiet(scene.bootstrap, scene.namer.training_results(), 1, wait_s=0, settled=scene.handled)
    await scene.alert(_raised("cool-2", model="cool"))
    assert await scene.requested("cool") == [cool]
    assert [r["reason"].startswith("cooling down") for r in await scene.decisions("cool", 2)] == [True, False]

    # the schedule: a run every second (here) since the last one
    async with asyncio.timeout(60):
        while not (scheduled := await scene.requested("sched")):
            await asyncio.sleep(0.5)
    assert scheduled[0].trigger == "schedule"


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
