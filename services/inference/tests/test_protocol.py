"""The whole Open Inference Protocol as Triton's own clients speak it: health, repository, statistics
that show shared batches, streams, variants, bounded queues and deadlines, canary and shadow."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.registry.v1 import registry_pb2 as rpb
from loopline_core import grpcx
from loopline_core.kafka import TopicNamer
from loopline_core.registry import RegistryClient
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, read_topic, register_signed_model, set_alias
from loopline_testing.flow import metric, metrics_port
from tritonclient.utils import InferenceServerException

SERVICE = "inference.GRPCInferenceService"
X = np.random.default_rng(3).normal(size=(4, len(FEATURES))).astype(np.float32)


def _input(x: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


async def _health(addr: str) -> int:
    async with grpcx.channel(addr) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        return int(resp.status)


async def _until(cond: Callable[[], Any], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if await cond():
                    return
            except InferenceServerException:
                pass
            await asyncio.sleep(0.2)


async def _apply(registry: str, model: rpb.Model) -> None:
    rc = RegistryClient(registry)
    try:
        await rc.apply_model(model, actor="test")
    finally:
        await rc.close()


async def test_health_repository_config_reflection_and_statistics(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "inference", env={"inference": {"LOOPLINE_INFERENCE_RECONCILE_S": "1",
                                                               "LOOPLINE_INFERENCE_MAX_QUEUE_DELAY_MS": "20"}})
    addr, registry = svc.addr("inference"), svc.addr("registry")
    client = grpcx.with_auth(tga.InferenceServerClient(addr))
    assert await _health(addr) == health_pb2.HealthCheckResponse.NOT_SERVING, "no model loaded: not serving"
    index = (await client.get_model_repository_index(as_json=True))["models"]
    assert index == [{"name": "fraud", "state": "UNAVAILABLE", "reason": "no champion loaded yet"}]

    v1 = await register_signed_model(isolated, registry, "fraud", seed=1)
    await set_alias(registry, "fraud", "champion", v1.version)
    await _until(lambda: client.is_model_ready("fraud"))
    await _until(lambda: _is(_health(addr), health_pb2.HealthCheckResponse.SERVING))
    assert (await client.get_model_repository_index(as_json=True))["models"] == [
        {"name": "fraud", "version": "1", "state": "READY", "reason": "champion"}]
    config = (await client.get_model_config("fraud", as_json=True))["config"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "20000"
    assert config["input"][0]["dims"] == ["-1", str(len(FEATURES))]
    meta = await client.get_server_metadata(as_json=True)
    assert "statistics" in meta["extensions"] and "model_repository" in meta["extensions"]

    async with grpcx.channel(addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        calls = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = [s.name async for r in calls for s in r.list_services_response.service]
    assert SERVICE in listed and "grpc.health.v1.Health" in listed

    # 48 callers at once: their requests share batches, and the statistics say so in Triton's fields
    before = (await client.get_inference_statistics("fraud", as_json=True))["model_stats"][0]
    results = await asyncio.gather(*(client.infer("fraud", [_input(X[i % 4:i % 4 + 1])]) for i in range(48)))
    expected = make_model(1).predict(X).reshape(-1)
    for i, r in enumerate(results):
        assert abs(float(r.as_numpy("score")[0][0]) - expected[i % 4]) < 1e-6
    after = (await client.get_inference_statistics("fraud", as_json=True))["model_stats"][0]
    rows = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    batches = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert rows == 48 and 0 < batches < 48, (rows, batches)
    assert any(int(b["batch_size"]) > 1 for b in after["batch_stats"]), after["batch_stats"]
    stats = after["inference_stats"]
    assert int(stats["success"]["count"]) >= 48 and int(stats["queue"]["count"]) >= 48
    assert int(stats["compute_infer"]["ns"]) > 0

    # unload: not ready, not serving, calls refused as unavailable; load: back
    await client.unload_model("fraud")
    assert not await client.is_model_ready("fraud")
    assert await _health(addr) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(InferenceServerException, match="unloaded"):
        await client.infer("fraud", [_input(X)])
    await client.load_model("fraud")
    assert await client.is_model_ready("fraud")
    assert (await client.infer("fraud", [_input(X)])).get_response().model_version == "1"
    with pytest.raises(InferenceServerException, match="unknown model"):
        await client.load_model("nope")
    await client.close()


async def _is(awaitable: Any, want: int) -> bool:
    return bool(await awaitable == want)


async def test_stream_answers_each_request_and_survives_a_bad_one(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "inference")
    v1 = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=1)
    await set_alias(svc.addr("registry"), "fraud", "champion", v1.version)
    aio = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    await _until(lambda: aio.is_model_ready("fraud"))
    await aio.close()

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcx.with_auth(tg.InferenceServerClient(svc.addr("inference")))
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    bad = tg.InferInput("features", [1, 3], "FP32")
    bad.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    for i in range(3):
        client.async_stream_infer("fraud", [_input(X[i:i + 1])], request_id=f"good-{i}")
    client.async_stream_infer("fraud", [bad], request_id="bad")
    client.async_stream_infer("nope", [_input(X)], request_id="unknown")
    client.async_stream_infer("fraud", [_input(X[3:4])], request_id="after")
    got = [await asyncio.to_thread(answers.get, True, 30) for _ in range(6)]
    client.stop_stream()
    client.close()
    ok = {r.get_response().id: float(r.as_numpy("score")[0][0]) for r, e in got if e is None}
    errors = sorted(str(e) for r, e in got if e is not None)
    expected = make_model(1).predict(X).reshape(-1)
    assert set(ok) == {"good-0", "good-1", "good-2", "after"}, "the stream outlived the bad requests"
    assert abs(ok["after"] - expected[3]) < 1e-6 and abs(ok["good-1"] - expected[1]) < 1e-6
    assert len(errors) == 2
    assert "INVALID_ARGUMENT" in errors[0] + errors[1] and "NOT_FOUND" in errors[0] + errors[1]


async def test_variants_route_and_a_refused_export_falls_back_to_torch(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "inference")
    registry = svc.addr("registry")
    await _apply(registry, rpb.Model(name="fraud", variants=rpb.VariantPolicy(
        default_variant="onnx", fast_variant="onnx-int8", fast_budget_ms=10)))
    v1 = await register_signed_model(isolated, registry, "fraud", seed=1, exports=True)
    await set_alias(registry, "fraud", "champion", v1.version)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    await _until(lambda: client.is_model_ready("fraud"))
    x = np.random.default_rng(9).normal(size=(64, len(FEATURES))).astype(np.float32)
    torch_scores = make_model(1).predict(x).reshape(-1)

    async def run(**params: Any) -> tuple[str, np.ndarray]:
        r = await client.infer("fraud", [_input(x)], parameters=params or None)
        return r.get_response().parameters["variant"].string_param, r.as_numpy("score").reshape(-1)

    variant, scores = await run()
    assert variant == "onnx", "the policy's default variant answers"
    assert np.abs(scores - torch_scores).max() < 1e-5, "ONNX Runtime agrees with torch"
    variant, scores = await run(latency_budget_ms=5)
    assert variant == "onnx-int8", "a tight latency budget takes the fast variant"
    assert np.abs(scores - torch_scores).max() < 0.1 and not np.array_equal(scores, torch_scores)
    variant, scores = await run(variant="torch")
    assert variant == "torch" and np.abs(scores - torch_scores).max() < 1e-6

    # a version whose ONNX export was tampered with: that variant is never loaded, torch answers
    v2 = await register_signed_model(isolated, registry, "fraud", seed=2, exports=True, tamper_export="onnx")
    await set_alias(registry, "fraud", "champion", v2.version)
    await _until(lambda: _version_is(client, "2"))
    variant, scores = await run()
    assert variant == "torch", "the refused ONNX export did not load; the in-process variant serves"
    assert np.abs(scores - make_model(2).predict(x).reshape(-1)).max() < 1e-6
    variant, _ = await run(latency_budget_ms=5)
    assert variant == "onnx-int8", "the untampered INT8 export still loaded"
    await client.close()


async def _version_is(client: tga.InferenceServerClient, version: str) -> bool:
    r = await client.infer("fraud", [_input(X)])
    return bool(r.get_response().model_version == version)


async def test_a_full_queue_refuses_and_an_expired_request_is_not_run(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "inference", env={"inference": {
        "LOOPLINE_INFERENCE_MAX_QUEUE": "8", "LOOPLINE_INFERENCE_MAX_BATCH": "1000",
        "LOOPLINE_INFERENCE_EAGER_WHEN_IDLE": "false",
        "LOOPLINE_INFERENCE_MAX_QUEUE_DELAY_MS": "500"}})
    v1 = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=1)
    await set_alias(svc.addr("registry"), "fraud", "champion", v1.version)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    await _until(lambda: client.is_model_ready("fraud"))

    # every request waits up to 500 ms for company; 8 rows fit in the queue, the rest are refused at once
    results = await asyncio.gather(*(client.infer("fraud", [_input(X)]) for _ in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 2 and len(refused) == 4, results
    assert all(r.status() == "StatusCode.RESOURCE_EXHAUSTED" and "queue is full" in r.message() for r in refused)

    before = (await client.get_inference_statistics("fraud", as_json=True))["model_stats"][0]
    with pytest.raises(InferenceServerException) as err:
        await client.infer("fraud", [_input(X)], client_timeout=0.1)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    await asyncio.sleep(1.0)  # the batch it waited for would have run by now
    after = (await client.get_inference_statistics("fraud", as_json=True))["model_stats"][0]
    assert after.get("inference_count") == before.get("inference_count"), "the expired request was not run"
    port = metrics_port(svc.running["inference"].log)
    assert metric(port, "loopline_inference_requests_total", model="fraud", code="RESOURCE_EXHAUSTED") == 4
    assert metric(port, "loopline_inference_queued_rows", model="fraud", role="champion", variant="torch") == 0
    await client.close()


async def test_canary_is_sticky_by_entity_and_shadow_logs_both(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "inference", env={"inference": {"LOOPLINE_INFERENCE_RECONCILE_S": "1"}})
    registry = svc.addr("registry")
    await _apply(registry, rpb.Model(name="fraud", rollout=rpb.RolloutPolicy(
        mode="canary", canary_share=0.5, sticky_by="entity", alpha=0.05, min_samples=10, latency_budget_ms=100)))
    v1 = await register_signed_model(isolated, registry, "fraud", seed=1)
    v2 = await register_signed_model(isolated, registry, "fraud", seed=2)
    await set_alias(registry, "fraud", "champion", v1.version)
    await set_alias(registry, "fraud", "challenger", v2.version)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    await _until(lambda: _index_has(client, "challenger"))

    async def version_for(entity: str) -> str:
        r = await client.infer("fraud", [_input(X[:1])], parameters={"entity_ids": entity},
                               request_id=f"{entity}-{np.random.default_rng().integers(1 << 30)}")
        return str(r.get_response().model_version)

    entities = [f"customer-{i}" for i in range(120)]
    first = {e: await version_for(e) for e in entities}
    again = {e: await version_for(e) for e in entities}
    assert first == again, "an entity meets the same arm every time"
    share = sum(v == "2" for v in first.values()) / len(entities)
    assert 0.3 < share < 0.7, share  # binomial(120, 0.5): 0.5 +- 4.4 sd

    # shadow: every caller gets the champion; the challenger scores a copy, logged as a shadow row
    await _apply(registry, rpb.Model(name="fraud", rollout=rpb.RolloutPolicy(
        mode="shadow", alpha=0.05, min_samples=10, latency_budget_ms=100)))
    await _until(lambda: _all_champion(client))
    for i in range(10):
        r = await client.infer("fraud", [_input(X[:1])], parameters={"entity_ids": f"s{i}"}, request_id=f"shadow-{i}")
        assert r.get_response().model_version == "1"
    rows = [PredictionLogged.FromString(r.value) for r in await read_topic(
        isolated["LOOPLINE_KAFKA_BOOTSTRAP"], TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"]).predictions("fraud"),
        2 * len(entities) + 20 + 5, timeout=60)]
    shadow = {p.request_id: p for p in rows if p.request_id.startswith("shadow-") and p.shadow}
    served = {p.request_id: p for p in rows if p.request_id.startswith("shadow-") and not p.shadow}
    assert set(shadow) == set(served) == {f"shadow-{i}" for i in range(10)}
    assert all(p.model_version == 2 and p.role == "challenger" for p in shadow.values())
    assert all(p.model_version == 1 and p.role == "champion" for p in served.values())
    assert all(shadow[k].metadata.event_id != served[k].metadata.event_id for k in shadow), "rows keep their own ids"

    # each role's and variant's traffic is counted apart, and the shadow copies as such
    port = metrics_port(svc.running["inference"].log)
    rows_by_role = {role: metric(port, "loopline_inference_variant_requests_total", model="fraud", role=role,
                                 variant="torch") for role in ("champion", "challenger")}
    assert rows_by_role["champion"] > 0 and rows_by_role["challenger"] >= 10, rows_by_role
    assert metric(port, "loopline_inference_shadow_total", model="fraud", outcome="scored") >= 10  # probes too
    assert metric(port, "loopline_inference_requests_total", model="fraud", code="OK") >= 2 * len(entities) + 10
    await client.close()


async def _index_has(client: tga.InferenceServerClient, role: str) -> bool:
    models = (await client.get_model_repository_index(as_json=True))["models"]
    return any(m.get("reason") == role for m in models)


async def _all_champion(client: tga.InferenceServerClient) -> bool:
    versions = [await _version_for(client, f"probe-{i}") for i in range(20)]
    return all(v == "1" for v in versions)


async def _version_for(client: tga.InferenceServerClient, entity: str) -> str:
    r = await client.infer("fraud", [_input(X[:1])], parameters={"entity_ids": entity})
    return str(r.get_response().model_version)


async def test_entity_requests_are_scored_with_the_feature_services_vectors(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "feature", "inference")
    v1 = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=1)
    await set_alias(svc.addr("registry"), "fraud", "champion", v1.version)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    await _until(lambda: client.is_model_ready("fraud"))
    ids = tg.InferInput("entity_ids", [2], "BYTES")
    ids.set_data_from_numpy(np.array([b"c1", b"c2"], dtype=np.object_))
    rows = tg.InferInput("request", [2], "BYTES")
    rows.set_data_from_numpy(np.array([json.dumps({"amount": 20.0, "merchant_category": "fuel"}).encode(),
                                       json.dumps({"amount": 900.0, "merchant_category": "gift_cards"}).encode()],
                                      dtype=np.object_))
    r = await client.infer("fraud", [ids, rows], parameters={"as_of": 1.7e9})
    scores = r.as_numpy("score").reshape(-1)
    assert scores.shape == (2,) and scores[0] != scores[1]

    from loopline.feature.v1 import feature_pb2, feature_pb2_grpc  # noqa: PLC0415
    from loopline_core.events import timestamp  # noqa: PLC0415

    async with grpcx.channel(svc.addr("feature")) as ch:
        resp = await feature_pb2_grpc.FeatureServiceStub(ch).GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(
            feature_view="transactions", entity_ids=["c1", "c2"], features=FEATURES, as_of=timestamp(1.7e9),
            request=[feature_pb2.RequestRow(numbers={"amount": 20.0}, strings={"merchant_category": "fuel"}),
                     feature_pb2.RequestRow(numbers={"amount": 900.0}, strings={"merchant_category": "gift_cards"})]))
    x = np.asarray([list(row.values) for row in resp.rows], dtype=np.float32)
    assert np.abs(scores - make_model(1).predict(x).reshape(-1)).max() < 1e-6, "same vectors, same scores"

    bad = tg.InferInput("request", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"{not json"], dtype=np.object_))
    one = tg.InferInput("entity_ids", [1], "BYTES")
    one.set_data_from_numpy(np.array([b"c1"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not JSON") as err:
        await client.infer("fraud", [one, bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    await client.close()
