"""Builders for tests: read a topic to the end, make and register a signed model."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import grpc
import numpy as np
import torch
from aiokafka import AIOKafkaConsumer
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core.kafka import Record
from loopline_core.objstore import ObjectStore
from loopline_core.signing import SigningKey
from loopline_ml import artifact
from loopline_ml.drift import reference

FEATURES = ["amount", "log_amount", "txn_count_24h", "mean_amount_24h", "amount_to_mean", "night", "risky_category"]


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Record]:
    """Read ``topic`` from the start until ``count`` records arrived (or fail after ``timeout``)."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                         group_id=f"reader-{uuid.uuid4().hex[:8]}")
    await c.start()
    out: list[Record] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < count:
                for recs in (await c.getmany(timeout_ms=200)).values():
                    out += [Record(r.topic, r.partition, r.offset, r.key, r.value or b"", tuple(r.headers or ()),
                                   r.timestamp) for r in recs]
    finally:
        await c.stop()
    return out


async def quiet(bootstrap: str, topic: str, expected: int, wait_s: float = 3.0) -> list[Record]:
    """All records on ``topic`` after ``wait_s`` more seconds (to check that nothing extra arrived)."""
    records = await read_topic(bootstrap, topic, expected)
    await asyncio.sleep(wait_s)
    return await read_topic(bootstrap, topic, expected) if expected else records


def make_model(seed: int = 0, features: list[str] | None = None) -> artifact.ScoringModel:
    names = features or FEATURES
    torch.manual_seed(seed)
    net = artifact.build_network(len(names), [8])
    return artifact.ScoringModel(artifact.ModelConfig(names, [8], [0.0] * len(names), [1.0] * len(names)), net)


async def register_signed_model(env: dict[str, str], registry_addr: str, model_name: str, *, seed: int = 0,
                                reference_x: np.ndarray | None = None, key: SigningKey | None = None,
                                tamper: bool = False, metrics: dict[str, float] | None = None,
                                ) -> registry_pb2.ModelVersion:
    """Save, sign (with the stack's key unless ``key``), upload and register a small model.

    ``tamper`` flips a byte of the weights after signing, as an attacker or a bad disk would.
    """
    private = Path(env["LOOPLINE_SIGNING_KEY"])
    key = key or SigningKey(private, private.with_suffix(".pub"))
    store = ObjectStore(env["LOOPLINE_S3_ENDPOINT"], env["LOOPLINE_S3_ACCESS_KEY"], env["LOOPLINE_S3_SECRET_KEY"])
    model = make_model(seed)
    x = reference_x if reference_x is not None else np.random.default_rng(seed).normal(size=(500, len(FEATURES)))
    run_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "model"
        artifact.save(d, model, reference(x, FEATURES))
        sig = Path(tmp) / "model.sig"
        from loopline_core.signing import sign_dir  # noqa: PLC0415

        key_id = sign_dir(d, key, sig)
        if tamper:
            raw = bytearray((d / "model.pt").read_bytes())
            raw[-100] ^= 0xFF
            (d / "model.pt").write_bytes(bytes(raw))
        prefix = f"{model_name}/{run_id}"
        await store.put_dir("loopline-models", f"{prefix}/model", d)
        await store.put_bytes("loopline-models", f"{prefix}/model.sig", sig.read_bytes())
    async with grpc.aio.insecure_channel(registry_addr) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        version = registry_pb2.ModelVersion(
            model_name=model_name, artifact_uri=f"s3://loopline-models/{prefix}/model",
            signature_uri=f"s3://loopline-models/{prefix}/model.sig", signer_key_id=key_id, dataset_digest="test",
            run_id=run_id, feature_names=FEATURES, metrics=metrics or {"auc": 0.5})
        resp = await stub.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(version=version))
    stored: registry_pb2.ModelVersion = resp.version
    return stored


async def set_alias(registry_addr: str, model_name: str, alias: str, version: int) -> None:
    async with grpc.aio.insecure_channel(registry_addr) as ch:
        await registry_pb2_grpc.RegistryServiceStub(ch).SetAlias(registry_pb2.SetAliasRequest(
            model_name=model_name, alias=alias, version=version, reason="test", actor="test"))
