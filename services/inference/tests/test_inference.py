"""Inference as its own process: Triton's client unchanged, bad requests, refused artifacts, reloads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.grpc as tg
from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.monitor.v1.events_pb2 import ArtifactRefused
from loopline_core import grpcx
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import TopicNamer
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_core.registry import RegistryClient
from loopline_inference.domain.tensors import TensorIn, to_batch
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, read_topic, register_signed_model, set_alias
from tritonclient.utils import InferenceServerException


def test_tensor_checks() -> None:
    raw = np.ones((2, 3), dtype="<f4").tobytes()
    assert to_batch([TensorIn("features", "FP32", (2, 3), raw, [])], 3).shape == (2, 3)
    for bad, msg in [
        (TensorIn("x", "FP32", (2, 3), raw, []), "unknown input"),
        (TensorIn("features", "INT64", (2, 3), raw, []), "must be FP32"),
        (TensorIn("features", "FP32", (2, 4), raw, []), "shape"),
        (TensorIn("features", "FP32", (2, 3), raw[:-4], []), "bytes"),
        (TensorIn("features", "FP32", (1, 3), None, [1.0, float("nan"), 2.0]), "finite"),
    ]:
        with pytest.raises(Exception, match=msg):
            to_batch([bad], 3)


def _input(x: np.ndarray, name: str = "features", dtype: str = "FP32") -> tg.InferInput:
    inp = tg.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return inp


async def _serving(client: tg.InferenceServerClient, version: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if client.get_model_metadata("fraud").versions == [version]:
                    return
            except InferenceServerException:
                pass
            await asyncio.sleep(0.2)


async def test_serves_the_champion_to_tritons_client(isolated: dict[str, str],
                                                     services: Callable[..., ServiceSet]) -> None:
    svc = services("registry", "inference", env={"inference": {"LOOPLINE_INFERENCE_RECONCILE_S": "60"}})
    client = grpcx.with_auth(tg.InferenceServerClient(svc.addr("inference")))
    assert client.is_server_live()
    assert not client.is_server_ready(), "no champion yet"
    with pytest.raises(InferenceServerException, match="no champion"):
        client.infer("fraud", [_input(np.zeros((1, 7), np.float32))])

    v1 = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=1)
    await set_alias(svc.addr("registry"), "fraud", "champion", v1.version)
    await _serving(client, "1")
    assert client.is_server_ready() and client.is_model_ready("fraud")
    cfg = client.get_model_config("fraud").config
    assert cfg.name == "fraud" and list(cfg.input[0].dims) == [-1, len(FEATURES)]

    x = np.random.default_rng(0).normal(size=(5, len(FEATURES))).astype(np.float32)
    out = client.infer("fraud", [_input(x)], outputs=[tg.InferRequestedOutput("score")], request_id="r-1",
                       parameters={"entity_ids": "a,b,c,d,e"})
    expected = make_model(1).predict(x)
    np.testing.assert_allclose(out.as_numpy("score"), expected, rtol=1e-5)
    assert out.get_response().model_version == "1" and out.get_response().id == "r-1"

    # bad requests get the right status and the server stays up
    for call, code in [
        (lambda: client.infer("nope", [_input(x)]), "StatusCode.NOT_FOUND"),
        (lambda: client.infer("fraud", [_input(x, name="wrong")]), "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("fraud", [_input(x[:, :3])]), "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("fraud", [_input(x.astype(np.float64), dtype="FP64")]), "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("fraud", [_input(x)], model_version="7"), "StatusCode.NOT_FOUND"),
        (lambda: client.infer("fraud", [_input(np.full_like(x, np.nan))]), "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("fraud", [_input(x)], outputs=[tg.InferRequestedOutput("proba")]),
         "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("fraud", [_input(x)], parameters={"variant": 3}), "StatusCode.INVALID_ARGUMENT"),
        (lambda: client.infer("fraud", [_input(x)], parameters={"latency_budget_ms": "soon"}),
         "StatusCode.INVALID_ARGUMENT"),
    ]:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == code
    assert client.is_server_live()

    # a tampered artifact made champion is refused; version 1 keeps serving
    bad = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=2, tamper=True)
    await set_alias(svc.addr("registry"), "fraud", "champion", bad.version)
    log = svc.running["inference"].log
    async with asyncio.timeout(30):
        while "refused to load model" not in log.read_text():
            await asyncio.sleep(0.2)
    assert "signature verification failed" in log.read_text()
    assert client.infer("fraud", [_input(x)]).get_response().model_version == "1"
    refused = await _refusals(isolated, 1)
    assert [(r.model_version, r.service, r.kind) for r in refused] == [(bad.version, "inference", "tampered")], \
        "a refused artifact is an alert, not just a log line"

    # a good new champion is picked up from the model event, without a restart
    v3 = await register_signed_model(isolated, svc.addr("registry"), "fraud", seed=3)
    await set_alias(svc.addr("registry"), "fraud", "champion", v3.version)
    await _serving(client, str(v3.version))
    np.testing.assert_allclose(client.infer("fraud", [_input(x)]).as_numpy("score"), make_model(3).predict(x),
                               rtol=1e-5)

    await _rollback_and_retired(isolated, svc.addr("registry"), client, x, v3.version)

    # every row served is logged for the monitor, with its inputs and the version that scored it
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    logged = [PredictionLogged.FromString(r.value) for r in
              await read_topic(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.predictions("fraud"), 7)]
    # rows are keyed by entity, so they spread over partitions: put them back in row order
    first = sorted((p for p in logged if p.request_id == "r-1"), key=lambda p: p.metadata.event_id)
    assert [p.entity_id for p in first] == ["a", "b", "c", "d", "e"]
    np.testing.assert_allclose([list(p.inputs) for p in first], x, rtol=1e-6)
    assert {p.model_version for p in first} == {1}


async def _refusals(env: dict[str, str], count: int) -> list[ArtifactRefused]:
    namer = TopicNamer(env["LOOPLINE_TOPIC_PREFIX"])
    records = await read_topic(env["LOOPLINE_KAFKA_BOOTSTRAP"], namer.alerts(), count)
    assert all(r.header(MESSAGE_TYPE) == "loopline.monitor.v1.ArtifactRefused" for r in records)
    return [ArtifactRefused.FromString(r.value) for r in records]


async def _rollback_and_retired(env: dict[str, str], registry: str, client: tg.InferenceServerClient,
                                x: np.ndarray, serving: int) -> None:
    """A rollback reaches inference in one call; a retired version is never served."""
    v5 = await register_signed_model(env, registry, "fraud", seed=5)
    await set_alias(registry, "fraud", "champion", v5.version)
    await _serving(client, str(v5.version))
    rc = RegistryClient(registry)
    try:
        back, left = await rc.rollback("fraud", "champion", actor="sre", reason="v5 misbehaves", expected=v5.version)
        assert (back.version, left) == (serving, v5.version)
        await _serving(client, str(serving))
        np.testing.assert_allclose(client.infer("fraud", [_input(x)]).as_numpy("score"), make_model(3).predict(x),
                                   rtol=1e-5)

        await rc.set_stage("fraud", v5.version, "retired", actor="sre", reason="bad weights")
        with pytest.raises(LooplineError) as err:
            await rc.set_alias("fraud", "champion", v5.version, actor="sre", reason="oops", expected=serving)
        assert err.value.kind is ErrorKind.FAILED_PRECONDITION and "retired" in err.value.message
        # the version that held champion before this one is the tampered one: retire it, then roll back
        await rc.set_stage("fraud", serving - 1, "retired", actor="sre", reason="tampered")
        with pytest.raises(LooplineError) as err:
            await rc.rollback("fraud", "champion", actor="sre", reason="again")
        assert err.value.kind is ErrorKind.FAILED_PRECONDITION and "retired" in err.value.message
        assert client.infer("fraud", [_input(x)]).get_response().model_version == str(serving), \
            "a retired version is never served"
    finally:
        await rc.close()


async def test_an_unknown_signer_is_refused(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                            tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loopline_core.signing import generate_key  # noqa: PLC0415

    svc = services("registry", "inference")
    stranger = generate_key(tmp_path / "keys", "stranger")
    v = await register_signed_model(isolated, svc.addr("registry"), "fraud", key=stranger)
    await set_alias(svc.addr("registry"), "fraud", "champion", v.version)
    log = svc.running["inference"].log
    async with asyncio.timeout(30):
        while "refused to load model" not in log.read_text():
            await asyncio.sleep(0.2)
    assert "unknown key" in log.read_text()
    assert not grpcx.with_auth(tg.InferenceServerClient(svc.addr("inference"))).is_model_ready("fraud")
    assert [(r.kind, r.signer_key_id) for r in await _refusals(isolated, 1)] == [("unknown_key", v.signer_key_id)]
