"""Safe rollout end to end, through the real registry, inference and retrainer processes.

A world where a transaction is fraud exactly when its first feature is positive. The champion scores
it right; a planted bad challenger scores it inverted. Served through Triton's client as a canary,
labelled later, it is rolled back automatically with a RolloutDecided "rolled_back" carrying the
evidence, while the champion keeps serving; a good challenger goes through the same canary and is
promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc.aio as tga
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline.retrainer.v1.events_pb2 import RolloutDecided
from loopline.trainer.v1.events_pb2 import TrainingCompleted
from loopline_core import grpcx
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.signing import SigningKey, sign_dir
from loopline_ml import artifact
from loopline_ml.profile import build_profile
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, quiet
from tritonclient.utils import InferenceServerException

ROLLOUT_TYPE = RolloutDecided.DESCRIPTOR.full_name
POLICY = pb.RolloutPolicy(mode="canary", canary_share=0.4, sticky_by="request", alpha=0.05, min_samples=120,
                          latency_budget_ms=1000, min_duration_s=1, max_duration_s=0)


def world_model(slope: float) -> artifact.ScoringModel:
    """score = sigmoid(slope * x0): right about the world for slope > 0, inverted for slope < 0."""
    net = artifact.build_network(len(FEATURES), [2])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[0].weight[0, 0], net[0].weight[1, 0] = 1.0, -1.0  # relu(x0), relu(-x0)
        net[2].weight[0, 0], net[2].weight[0, 1] = slope, -slope
    n = len(FEATURES)
    return artifact.ScoringModel(artifact.ModelConfig(FEATURES, [2], [0.0] * n, [1.0] * n), net)


async def register(env: dict[str, str], addr: str, model: artifact.ScoringModel, champion: int) -> int:
    """Sign, upload and register ``model`` as a trainer would, with a passed gate against ``champion``."""
    private = Path(env["LOOPLINE_SIGNING_KEY"])
    key = SigningKey(private, private.with_suffix(".pub"))
    store = ObjectStore(env["LOOPLINE_S3_ENDPOINT"], env["LOOPLINE_S3_ACCESS_KEY"], env["LOOPLINE_S3_SECRET_KEY"])
    run_id = str(uuid.uuid4())
    prefix = f"fraud/{run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "model"
        ref = build_profile(np.random.default_rng(0).normal(size=(200, len(FEATURES))), FEATURES,
                            dict.fromkeys(FEATURES, "num"), None)
        artifact.save(d, model, ref)
        key_id = sign_dir(d, key, Path(tmp) / "model.sig")
        await store.put_dir("loopline-models", f"{prefix}/model", d)
        await store.put_bytes("loopline-models", f"{prefix}/model.sig", (Path(tmp) / "model.sig").read_bytes())
    gate = pb.Gate(passed=True, champion_version=champion, summary="fixture gate passed",
                   checks=[pb.GateCheck(metric="auc_roc", kind="absolute", threshold=0.5, value=0.9, passed=True)])
    async with grpcx.channel(addr) as ch:
        resp = await registry_pb2_grpc.RegistryServiceStub(ch).RegisterModelVersion(pb.RegisterModelVersionRequest(
            version=pb.ModelVersion(model_name="fraud", artifact_uri=f"s3://loopline-models/{prefix}/model",
                                    signature_uri=f"s3://loopline-models/{prefix}/model.sig", signer_key_id=key_id,
                                    dataset_digest="test", run_id=run_id, feature_names=FEATURES, gate=gate)))
    return int(resp.version.version)


async def trained(publisher: Publisher, namer: TopicNamer, version: int) -> None:
    """What the trainer says after registering a version: the retrainer takes it from there."""
    msg = TrainingCompleted(metadata=metadata("test", f"trained-{version}"), model_name="fraud",
                            version=str(version), succeeded=True)
    await publisher.publish(namer.training_results(), msg.SerializeToString(), key="fraud")


async def rollouts(bootstrap: str, namer: TopicNamer, count: int, timeout: float = 120) -> list[RolloutDecided]:
    async with asyncio.timeout(timeout):
        while True:
            records = await quiet(bootstrap, namer.model_events(), 0, wait_s=0)
            found = [RolloutDecided.FromString(r.value) for r in records if r.header(MESSAGE_TYPE) == ROLLOUT_TYPE]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.5)


async def traffic(client: tga.InferenceServerClient, publisher: Publisher, namer: TopicNamer, run: str,
                  n: int, seed: int) -> dict[str, int]:
    """``n`` one-row calls (request id = the transaction's event id), then each one's label; the served
    version per call."""
    x = np.random.default_rng(seed).normal(size=(n, len(FEATURES))).astype(np.float32)
    served: dict[str, int] = {}
    for i in range(n):
        inp = tga.InferInput("features", [1, len(FEATURES)], "FP32")
        inp.set_data_from_numpy(x[i:i + 1])
        out = await client.infer("fraud", [inp], request_id=f"{run}-{i}")
        served[f"{run}-{i}"] = int(out.get_response().model_version)
    for i in range(n):
        label = int(x[i, 0] > 0)
        await publisher.publish(namer.labels("transactions"), f'{{"event_id": "{run}-{i}", "label": {label}}}'.encode(),
                                key=f"{run}-{i}", content_type="application/json")
    return served


async def serving(client: tga.InferenceServerClient, version: int, timeout: float = 60) -> None:
    """Until some call is answered by ``version`` (a canary's share of calls, or all of a champion's)."""
    x = np.zeros((1, len(FEATURES)), np.float32)
    async with asyncio.timeout(timeout):
        while True:
            inp = tga.InferInput("features", [1, len(FEATURES)], "FP32")
            inp.set_data_from_numpy(x)
            with contextlib.suppress(InferenceServerException):  # nothing loaded yet
                out = await client.infer("fraud", [inp], request_id=f"probe-{uuid.uuid4().hex}")
                if int(out.get_response().model_version) == version:
                    return
            await asyncio.sleep(0.1)


async def test_bad_canary_is_rolled_back_and_a_good_one_promoted(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc = services("registry", "inference", "retrainer",
                   env={"retrainer": {"LOOPLINE_RETRAINER_ROLLOUT_CHECK_S": "1"}})
    addr, bootstrap = svc.addr("registry"), isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    rc = RegistryClient(addr)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    try:
        v1 = await register(isolated, addr, world_model(5.0), 0)
        await rc.set_alias("fraud", "champion", v1, actor="test", reason="first")
        await rc.apply_model(pb.Model(name="fraud", rollout=POLICY), actor="test")
        await serving(client, v1)

        # the planted bad challenger: gated, handed to the rollout, served to a share of requests
        v2 = await register(isolated, addr, world_model(-5.0), v1)
        await trained(publisher, namer, v2)
        started = (await rollouts(bootstrap, namer, 1))[0]
        assert (started.decision, started.challenger_version, started.champion_version) == ("started", v2, v1)
        await serving(client, v2)
        served = await traffic(client, publisher, namer, "bad", 200, seed=1)
        assert {v1, v2} <= set(served.values()), "the canary served both arms"
        back = (await rollouts(bootstrap, namer, 2))[1]
        assert (back.decision, back.challenger_version) == ("rolled_back", v2), back
        label = next(s for s in back.signals if s.name == "label_error_rate")
        assert label.verdict == "worse" and label.worse_ratio >= label.threshold, label
        assert label.challenger_events > label.champion_events and "label_error_rate" in back.reason
        assert (await rc.model("fraud")).aliases == {"champion": v1}, "the champion was never touched"
        assert (await rc.get("fraud", v2)).stage == pb.STAGE_DEPRECATED
        async with asyncio.timeout(60):  # inference drops the challenger: every call meets the champion again
            while set((await traffic(client, publisher, namer, f"after-{uuid.uuid4().hex[:6]}", 20, 2)).values()) \
                    != {v1}:
                await asyncio.sleep(0.5)

        # a good challenger through the same canary is promoted
        v3 = await register(isolated, addr, world_model(6.0), v1)
        await trained(publisher, namer, v3)
        await rollouts(bootstrap, namer, 3)
        await serving(client, v3)
        await traffic(client, publisher, namer, "good", 500, seed=3)
        done = (await rollouts(bootstrap, namer, 4))[3]
        assert (done.decision, done.challenger_version) == ("promoted", v3), done
        assert all(s.verdict == "not_worse" for s in done.signals)
        assert (await rc.model("fraud")).aliases == {"champion": v3}
        await serving(client, v3)
    finally:
        await client.close()
        await rc.close()
