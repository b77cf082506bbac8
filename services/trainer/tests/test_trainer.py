"""Trainer with the registry and the feature service, each its own process, on the real stack."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline.monitor.v1.events_pb2 import ArtifactRefused
from loopline.registry.v1 import registry_pb2 as pb
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_cli.demo.synth import TransactionStream
from loopline_core.events import metadata, timestamp
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.signing import TrustStore
from loopline_ml.exports import onnx_scores
from loopline_ml.store import fetch_verified, split_uri
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, register_signed_model, set_alias
from loopline_trainer.domain.lineage import refit

ROWS = 800


async def _seed_data(publisher: Publisher, namer: TopicNamer, n: int, seed: int = 1) -> None:
    stream = TransactionStream(seed=seed)
    for _ in range(n):
        txn, label = stream.next()
        env = EventIngested(metadata=metadata("test", txn["event_id"]), dataset="transactions",
                            event_time=timestamp(txn["ts"]), payload=json.dumps(txn).encode())
        await publisher.publish(namer.valid("transactions"), env.SerializeToString(), key=txn["customer_id"])
        await publisher.publish(namer.labels("transactions"),
                                json.dumps({"event_id": txn["event_id"], "label": label}).encode(),
                                content_type="application/json")


async def _start(isolated: dict[str, str], services: Callable[..., ServiceSet],
                 publisher: Publisher) -> tuple[ServiceSet, TopicNamer, str]:
    svc = services("registry", "feature", "trainer")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    await _seed_data(publisher, namer, ROWS)
    # The feature service has logged every event and label once both its groups committed them all
    # (a request sent earlier would train on fewer rows).
    logged = {namer.group("feature"): [namer.valid("transactions")],
              namer.group("feature-labels"): [namer.labels("transactions")]}
    assert len(await quiet(bootstrap, namer.labels("transactions"), ROWS, wait_s=0, settled=logged)) == ROWS
    return svc, namer, bootstrap


def _request(event_id: str, model: str = "fraud", **fields: object) -> bytes:
    req = TrainingRequested(metadata=metadata("test", event_id), model_name=model, dataset="transactions",
                            reason="test", **fields)  # type: ignore[arg-type]
    return req.SerializeToString()


async def _results(publisher: Publisher, namer: TopicNamer, bootstrap: str, requests: list[bytes],
                   expected: int) -> list[TrainingCompleted]:
    for r in requests:
        await publisher.publish(namer.training_requests(), r, key="fraud")
    # every result, once the trainer's group committed all requests: no extra version hides
    trained = {namer.group("trainer"): [namer.training_requests()]}
    return [TrainingCompleted.FromString(r.value) for r in
            await quiet(bootstrap, namer.training_results(), expected, wait_s=0, settled=trained, timeout=120)]


def _store(isolated: dict[str, str]) -> ObjectStore:
    return ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                       isolated["LOOPLINE_S3_SECRET_KEY"])


async def _check_exports(v1: pb.ModelVersion, store: ObjectStore, trust: TrustStore) -> None:
    """Signed exports in the Triton layout whose onnxruntime scores match the torch model's."""
    assert {e.format for e in v1.exports} == {"onnx", "onnx-int8"}
    with tempfile.TemporaryDirectory() as tmp:
        torch_model = await fetch_verified(store, trust, v1.artifact_uri, v1.signature_uri, v1.signer_key_id,
                                           Path(tmp) / "torch")
        x = np.random.default_rng(0).uniform(0, 3, size=(64, len(v1.feature_names))).astype(np.float32)
        for e in v1.exports:
            d = Path(tmp) / e.format
            bucket, prefix = split_uri(e.uri)
            await store.get_dir(bucket, prefix, d / "model")
            sig = d / "model.sig"
            sig.write_bytes(await store.get_bytes(*split_uri(e.signature_uri)))
            trust.verify(d / "model", sig, e.signer_key_id)
            assert 'platform: "onnxruntime_onnx"' in (d / "model" / e.triton_model_name / "config.pbtxt").read_text()
            scores = onnx_scores(d / "model" / e.triton_model_name / "1" / "model.onnx", x)
            if e.format == "onnx":
                np.testing.assert_allclose(scores, torch_model.predict(x), atol=1e-5)
            assert abs(e.metrics["auc_roc"] - v1.metrics["auc_roc"]) < 0.02


async def test_a_request_becomes_an_evaluated_gated_exported_version_with_a_card(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc, namer, bootstrap = await _start(isolated, services, publisher)
    first = await _results(publisher, namer, bootstrap, [_request("run-a", seed=11, has_seed=True),
                                                         _request("run-a", seed=11, has_seed=True)], 2)
    registry = RegistryClient(svc.addr("registry"))
    try:
        await registry.set_alias("fraud", "champion", 1, actor="test", reason="baseline for the gate")
        # run-b: same data, seed 0 (a valid seed), against champion v1; a model nobody declared fails cleanly
        # redelivered: the same result (same event id) republished, not retrained
        assert first[0].metadata.event_id == first[1].metadata.event_id and first[0].metrics == first[1].metrics
        results = await _results(publisher, namer, bootstrap, [  # every result so far, on two partitions
            _request("run-b", seed=0, has_seed=True, params={"epochs": "120", "dataset_digest": "forged"}),
            _request("run-x", model="nope")], 4)
        by_run = {r.request_event_id: r for r in results}
        assert len(results) == 4 and {k: (r.version, r.succeeded) for k, r in by_run.items()} == {
            "run-a": ("1", True), "run-b": ("2", True), "run-x": ("", False)}
        assert "no spec" in by_run["run-x"].error
        assert first[0].gate_passed and first[0].stage and first[0].metrics["auc_roc"] > 0.8
        v1, v2 = await registry.get("fraud", 1), await registry.get("fraud", 2)
        model = await registry.model("fraud")
    finally:
        await registry.close()
    assert model.owner == "risk-ml" and model.intended_use and not model.requires_approval

    # provenance: every effective param, the request's seed (0 included), no forged field
    assert v1.run.seed == 11 and v2.run.seed == 0 and v2.run.params["epochs"] == "120"
    assert "dataset_digest" not in v2.run.params and v2.run.dataset_digest == v2.dataset_digest
    assert v1.dataset_digest == v2.dataset_digest  # all rows had arrived before either request
    assert v1.run.git_commit and len(v1.run.lock_hash) == 64 and v1.run.device == "cpu"
    assert len(v1.run.trajectory) == 150 and all(e.validation_loss > 0 for e in v1.run.trajectory)
    assert v1.run.data_from.seconds <= v1.run.data_to.seconds and v1.run.request_event_id == "run-a"

    # evaluation per slice, and the gate: v1 had no champion, v2 was compared with v1 on its test rows
    names = [s.slice for s in v1.slices]
    assert names[0] == "" and any(n.startswith("country=") for n in names)
    assert any(n.startswith("merchant_category=") for n in names) and any(n.startswith("amount_band=") for n in names)
    assert all(s.rows > 0 for s in v1.slices) and sum(s.rows for s in v1.slices if s.slice.startswith("country=")) \
        == v1.slices[0].rows
    one_class = [s for s in v1.slices if s.positives in (0, s.rows)]
    assert all("auc_roc" not in s.metrics for s in one_class)
    assert v1.gate.config_digest and all("skipped" in c.detail for c in v1.gate.checks if "change" in c.kind)
    assert v2.gate.champion_version == 1 and v2.metrics["champion_version"] == 1
    change = [c for c in v2.gate.checks if c.kind == "change"]
    assert change and change[0].baseline == v2.metrics["champion_auc_pr"] and "skipped" not in change[0].detail
    assert v2.slices[0].champion_metrics["auc_roc"] == v2.metrics["champion_auc_roc"]

    store = _store(isolated)
    await _check_exports(v1, store, TrustStore.from_dir(Path(isolated["LOOPLINE_TRUSTED_KEYS_DIR"])))
    # the model card, JSON and Markdown, with the version number the registry assigned
    assert v1.model_card_uri.endswith("fraud/run-a/card.json")
    card = json.loads(await store.get_bytes(*split_uri(v1.model_card_uri)))
    assert card["version"] == 1 and card["gate"]["passed"] and card["lineage"]["artifact_digest"]
    md = (await store.get_bytes(*split_uri(v1.model_card_uri.replace("card.json", "card.md")))).decode()
    assert "# Model card: fraud v1" in md and "country=" in md and "Intended use" in md


async def test_bit_identical_rerun_of_a_recorded_run_from_its_lineage(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc, namer, bootstrap = await _start(isolated, services, publisher)
    # the champion's weights were altered after signing: the trainer must not compare against them
    bad = await register_signed_model(isolated, svc.addr("registry"), "fraud", tamper=True)
    await set_alias(svc.addr("registry"), "fraud", "champion", bad.version)
    [result] = await _results(publisher, namer, bootstrap, [_request("run-lineage")], 1)
    assert result.succeeded, result.error
    registry = RegistryClient(svc.addr("registry"))
    try:
        v = await registry.get("fraud", int(result.version))
    finally:
        await registry.close()
    assert not v.gate.passed and v.gate.champion_version == bad.version and "failed closed" in v.gate.summary
    [refused] = [ArtifactRefused.FromString(r.value) for r in await quiet(bootstrap, namer.alerts(), 1, wait_s=0)]
    assert (refused.service, refused.model_version, refused.kind) == ("trainer", bad.version, "tampered")
    assert v.run.seed == 7  # unset in the request: the spec's
    store = _store(isolated)
    data = await store.get_bytes(*split_uri(v.run.dataset_uri))
    with tempfile.TemporaryDirectory() as tmp:
        again = refit(v.run, data, list(v.feature_names), Path(tmp) / "model")
        assert again.artifact_digest == v.run.artifact_digest
        bucket, prefix = split_uri(v.artifact_uri)
        recorded = await store.get_bytes(bucket, f"{prefix}/model.pt")
        assert (Path(tmp) / "model" / "model.pt").read_bytes() == recorded
        # and the lineage is what makes it so: another seed gives other bytes
        v.run.params["seed"] = "8"
        other = refit(v.run, data, list(v.feature_names), Path(tmp) / "other")
        assert other.artifact_digest != v.run.artifact_digest


async def test_a_window_start_and_a_warm_start_from_the_champion(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc, namer, bootstrap = await _start(isolated, services, publisher)
    [first] = await _results(publisher, namer, bootstrap, [_request("run-full", seed=1, has_seed=True)], 1)
    assert first.succeeded, first.error
    registry = RegistryClient(svc.addr("registry"))
    try:
        await registry.set_alias("fraud", "champion", 1, actor="test", reason="the warm start's origin")
        v1 = await registry.get("fraud", 1)
        # a second stream arrives after the onset (its event times overlap the first's: arrival decides)
        onset = time.time()
        await _seed_data(publisher, namer, 400, seed=2)
        logged = {namer.group("feature"): [namer.valid("transactions")],
                  namer.group("feature-labels"): [namer.labels("transactions")]}
        await quiet(bootstrap, namer.labels("transactions"), ROWS + 400, wait_s=0, settled=logged)
        evidence = json.dumps({"alert_id": "a-1", "kind": "feature_drift"})
        few = {"epochs": "5"}
        results = await _results(publisher, namer, bootstrap, [
            _request("run-window", seed=1, has_seed=True, window_start=timestamp(onset), trigger="feature_drift",
                     evidence=evidence, params={"trigger": "forged", "window_start": "0"}),
            _request("run-warm", seed=1, has_seed=True, warm_start_version=1, params=few),
            _request("run-warm-again", seed=1, has_seed=True, warm_start_version=1, params=few),
            _request("run-cold", seed=1, has_seed=True, params=few),
            _request("run-late", seed=1, has_seed=True, window_start=timestamp(time.time() + 3600))], 6)
        by_run = {r.request_event_id: r for r in results}
        assert all(by_run[r].succeeded for r in ("run-window", "run-warm", "run-warm-again", "run-cold"))
        assert not by_run["run-late"].succeeded and "arrived since" in by_run["run-late"].error
        window, warm, again, cold = [await registry.get("fraud", int(by_run[r].version))
                                     for r in ("run-window", "run-warm", "run-warm-again", "run-cold")]
    finally:
        await registry.close()
    # the window: only rows from the onset on, and the run says so (the request's params cannot say otherwise)
    assert window.metrics["dataset_rows"] == 400 < v1.metrics["dataset_rows"] + 400, "only what arrived after"
    assert float(window.run.params["window_start"]) == onset
    assert window.run.params["trigger"] == "feature_drift" and json.loads(window.run.params["evidence"])["alert_id"]
    # a warm start from the champion's verified weights: reproducible, and not what the seed alone gives
    assert warm.run.params["warm_start_version"] == "1" and "warm_start_version" not in cold.run.params
    assert warm.dataset_digest == again.dataset_digest == cold.dataset_digest
    assert warm.run.artifact_digest == again.run.artifact_digest != cold.run.artifact_digest
