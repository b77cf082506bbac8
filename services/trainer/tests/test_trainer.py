"""Trainer with the registry and the feature service, each its own process, on the real stack."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_cli.demo.synth import TransactionStream
from loopline_core.events import metadata, timestamp
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_core.signing import TrustStore
from loopline_ml.store import fetch_verified
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet
from loopline_trainer.domain.training import evaluate, time_split, train


def test_training_is_reproducible_and_learns() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=600) > 1.0).astype(np.float32)
    a, _ = train(x, y, ["a", "b", "c"], seed=3, epochs=60)
    b, _ = train(x, y, ["a", "b", "c"], seed=3, epochs=60)
    for k, v in a.network.state_dict().items():
        assert torch.equal(v, b.network.state_dict()[k])
    split = time_split(x, y)
    assert evaluate(a, split.x_test, split.y_test)["auc"] > 0.9


async def _seed_data(publisher: Publisher, namer: TopicNamer, n: int) -> None:
    stream = TransactionStream(seed=1)
    for _ in range(n):
        txn, label = stream.next()
        env = EventIngested(metadata=metadata("test", txn["event_id"]), dataset="transactions",
                            event_time=timestamp(txn["ts"]), payload=json.dumps(txn).encode())
        await publisher.publish(namer.valid("transactions"), env.SerializeToString(), key=txn["customer_id"])
        await publisher.publish(namer.labels("transactions"),
                                json.dumps({"event_id": txn["event_id"], "label": label}).encode(),
                                content_type="application/json")


async def test_a_request_becomes_a_signed_registered_version(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc = services("registry", "feature", "trainer")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    await _seed_data(publisher, namer, 800)
    # The feature service has logged every event and label once both its groups committed them all
    # (a request sent earlier would train on fewer rows).
    logged = {namer.group("feature"): [namer.valid("transactions")],
              namer.group("feature-labels"): [namer.labels("transactions")]}
    assert len(await quiet(bootstrap, namer.labels("transactions"), 800, wait_s=0, settled=logged)) == 800

    async def request(event_id: str) -> None:
        req = TrainingRequested(metadata=metadata("test", event_id), model_name="fraud", dataset="transactions",
                                seed=11, reason="test")
        await publisher.publish(namer.training_requests(), req.SerializeToString(), key="fraud")

    await request("run-a")
    await request("run-a")  # redelivered: same run, no second version
    await request("run-b")  # same data, same seed
    # every result, once the trainer's group committed all three requests: no extra version hides
    trained = {namer.group("trainer"): [namer.training_requests()]}
    results = [TrainingCompleted.FromString(r.value) for r in
               await quiet(bootstrap, namer.training_results(), 3, wait_s=0, settled=trained, timeout=120)]
    assert all(r.succeeded for r in results), [r.error for r in results]
    assert [r.version for r in results] == ["1", "1", "2"]
    assert results[0].metrics["auc"] > 0.8 and results[0].dataset_digest

    async with grpc.aio.insecure_channel(svc.addr("registry")) as ch:
        versions = (await registry_pb2_grpc.RegistryServiceStub(ch).ListModelVersions(
            registry_pb2.ListModelVersionsRequest(model_name="fraud"))).versions
    assert [v.version for v in versions] == [1, 2]
    v1, v2 = versions
    assert v1.params["seed"] == "11" and v1.params["torch"] == torch.__version__ and v1.run_id == "run-a"
    store = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                        isolated["LOOPLINE_S3_SECRET_KEY"])
    trust = TrustStore.from_dir(Path(isolated["LOOPLINE_TRUSTED_KEYS_DIR"]))
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        m1 = await fetch_verified(store, trust, v1.artifact_uri, v1.signature_uri, v1.signer_key_id, Path(a))
        m2 = await fetch_verified(store, trust, v2.artifact_uri, v2.signature_uri, v2.signer_key_id, Path(b))
    assert v1.dataset_digest == v2.dataset_digest
    for k, t in m1.network.state_dict().items():  # same snapshot + same seed: bit-identical weights
        assert torch.equal(t, m2.network.state_dict()[k])
    assert m1.config.feature_names == list(v1.feature_names)
