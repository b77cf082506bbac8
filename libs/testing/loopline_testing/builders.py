"""Builders for tests: read a topic to the end, make and register a signed model."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core import grpcx
from loopline_core.kafka import Record
from loopline_core.kafka.offsets import log_end
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.signing import SigningKey
from loopline_ml import artifact
from loopline_ml.profile import build_profile

FEATURES = ["amount", "log_amount", "txn_count_24h", "mean_amount_24h", "amount_to_mean", "night", "risky_category"]
CATEGORICAL = ("night", "risky_category")
MONITORING = {"categorical": list(CATEGORICAL), "drift_share": 0.5, "critical_share": 0.75, "window_labels": 500,
              "threshold": 0.5, "ranges": {"night": [0, 1], "risky_category": [0, 1]},
              "performance": [{"metric": "auc_roc", "direction": "higher", "warning": 0.8, "critical": 0.7}]}
"""The fraud spec's ``monitoring`` section, as the trainer stores it in a version's profile."""


def transactions(n: int, rng: np.random.Generator, *, amount_scale: float = 1.0, night: float = 0.1,
                 extra_txns: int = 0) -> np.ndarray:
    """Feature rows shaped like the fraud model's inputs (FEATURES order); the keywords shift them."""
    amount = rng.lognormal(3.5, 0.8, n) * amount_scale
    mean = rng.lognormal(3.5, 0.4, n) * amount_scale
    count = rng.poisson(3, n) + extra_txns
    return np.column_stack([amount, np.log1p(amount), count, mean, amount / mean,
                            (rng.random(n) < night).astype(float), (rng.random(n) < 0.2).astype(float)])


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Record]:
    """Read ``topic`` from the start until ``count`` records arrived (or fail after ``timeout``).

    It may return more than ``count`` (a fetch brings what it brings); use :func:`quiet` to prove
    that nothing beyond ``count`` arrived. Partitions are assigned by hand (no consumer group), so
    no group join delays the read.
    """
    async with asyncio.timeout(timeout):
        tps = await _partitions(bootstrap, [topic])
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        out: list[Record] = []
        try:
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            while len(out) < count:
                for recs in (await c.getmany(*tps, timeout_ms=200)).values():
                    out += [Record.of(r) for r in recs]
        finally:
            await c.stop()
    return out


async def _partitions(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    """The partitions of ``topics``, waiting for a topic that does not exist yet (callers bound the wait)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        out = []
        for t in topics:
            # topics() fetches the metadata but does not keep it, and a consumer with no subscription refreshes
            # its own view only every few minutes: a topic created after its start (a dead-letter topic made by
            # the first dead letter) would stay unknown. force_metadata_update() refreshes the kept view.
            await c._client.force_metadata_update()
            while not (parts := c.partitions_for_topic(t)):
                await asyncio.sleep(0.2)
                await c._client.force_metadata_update()
            out += [TopicPartition(t, p) for p in sorted(parts)]
        return out
    finally:
        await c.stop()


async def _end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        c.assign(tps)
        return await log_end(c, tps)
    finally:
        await c.stop()


async def _read_to_end(bootstrap: str, topic: str, timeout: float) -> list[Record]:
    """Every record on ``topic`` up to its end offsets as of now (manual assignment: no group)."""
    async with asyncio.timeout(timeout):
        tps = await _partitions(bootstrap, [topic])
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
        await c.start()
        out: list[Record] = []
        try:
            c.assign(tps)
            ends = await log_end(c, tps)
            await c.seek_to_beginning(*tps)
            while [tp for tp in tps if await c.position(tp) < ends[tp]]:
                for recs in (await c.getmany(*tps, timeout_ms=200)).values():
                    out += [Record.of(r) for r in recs if r.offset < ends[TopicPartition(r.topic, r.partition)]]
        finally:
            await c.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))


async def _wait_committed(bootstrap: str, settled: Mapping[str, Iterable[str]], timeout: float) -> None:
    """Wait until each consumer group in ``settled`` committed its topics up to their current end offsets."""
    async with asyncio.timeout(timeout):
        wanted = {group: await _partitions(bootstrap, topics) for group, topics in settled.items()}
        ends = {group: await _end_offsets(bootstrap, tps) for group, tps in wanted.items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    behind: dict[str, dict[TopicPartition, tuple[int, int]]] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                behind = {}
                for group, tps in wanted.items():
                    # explicit partitions: the local broker does not answer an OffsetFetch for "all"
                    done = await admin.list_consumer_group_offsets(group, partitions=tps)
                    lag = {tp: (done[tp].offset, end) for tp, end in ends[group].items()
                           if end > 0 and (tp not in done or done[tp].offset < end)}
                    if lag:
                        behind[group] = lag
                if not behind:
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"consumer groups did not commit to the end within {timeout:.0f}s "
                             f"(committed, end): {behind}") from None
    finally:
        await admin.close()


async def quiet(bootstrap: str, topic: str, expected: int, wait_s: float = 3.0, *,
                settled: Mapping[str, Iterable[str]] | None = None, timeout: float = 60.0) -> list[Record]:
    """Every record on ``topic`` once the producers upstream of it went quiet (to prove nothing extra arrived).

    First waits for ``expected`` records (none for 0); then, for each ``group: topics`` in
    ``settled``, until that consumer group has committed those input topics to their end offsets
    (as of the call), which proves its handlers ran for every input, and so published what they
    publish; then ``wait_s`` more seconds (pass 0 when ``settled`` already says when to look). It
    then reads ``topic`` to its end offsets: all the records present, however many, never only
    ``expected`` of them.
    """
    if expected:
        await read_topic(bootstrap, topic, expected, timeout)
    if settled:
        await _wait_committed(bootstrap, settled, timeout)
    if wait_s:
        await asyncio.sleep(wait_s)
    return await _read_to_end(bootstrap, topic, timeout)


def make_model(seed: int = 0, features: list[str] | None = None) -> artifact.ScoringModel:
    names = features or FEATURES
    torch.manual_seed(seed)
    net = artifact.build_network(len(names), [8])
    return artifact.ScoringModel(artifact.ModelConfig(names, [8], [0.0] * len(names), [1.0] * len(names)), net)


async def register_signed_model(env: dict[str, str], registry_addr: str, model_name: str, *, seed: int = 0,
                                reference_x: np.ndarray | None = None, key: SigningKey | None = None,
                                tamper: bool = False, metrics: dict[str, float] | None = None,
                                gate_passed: bool = True, gate_champion: int = 0, exports: bool = False,
                                tamper_export: str = "", profile: bool = True) -> registry_pb2.ModelVersion:
    """Save, sign (with the stack's key unless ``key``), upload and register a small model.

    ``tamper`` flips a byte of the weights after signing, as an attacker or a bad disk would. The
    version carries a gate with one check that passed (or not, per ``gate_passed``), compared against
    champion ``gate_champion`` (0: none), as a trainer would have stored it. Its reference profile is
    built from ``reference_x`` and the model's own scores of it (``profile=False``: an artifact without
    one, as versions trained before profiles existed). ``exports`` adds the
    trainer's signed ONNX and INT8 exports (Triton layout); ``tamper_export`` names one to corrupt.
    """
    private = Path(env["LOOPLINE_SIGNING_KEY"])
    key = key or SigningKey(private, private.with_suffix(".pub"))
    store = ObjectStore(env["LOOPLINE_S3_ENDPOINT"], env["LOOPLINE_S3_ACCESS_KEY"], env["LOOPLINE_S3_SECRET_KEY"])
    model = make_model(seed)
    x = reference_x if reference_x is not None else np.random.default_rng(seed).normal(size=(500, len(FEATURES)))
    run_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "model"
        types = {n: "cat" if n in CATEGORICAL else "num" for n in FEATURES}
        scores = model.predict(x.astype(np.float32)).ravel()
        ref = build_profile(x, FEATURES, types, scores, MONITORING) if profile else {}
        artifact.save(d, model, ref)
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
        built = await _exports(store, key, model, Path(tmp), prefix, model_name, tamper_export) if exports else []
    async with grpcx.channel(registry_addr) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        version = registry_pb2.ModelVersion(
            model_name=model_name, artifact_uri=f"s3://loopline-models/{prefix}/model",
            signature_uri=f"s3://loopline-models/{prefix}/model.sig", signer_key_id=key_id, dataset_digest="test",
            run_id=run_id, feature_names=FEATURES, metrics=metrics or {"auc": 0.5},
            gate=registry_pb2.Gate(passed=gate_passed, champion_version=gate_champion,
                                   summary="fixture gate " + ("passed" if gate_passed else "failed"),
                                   checks=[registry_pb2.GateCheck(metric="auc_roc", kind="absolute", threshold=0.5,
                                                                  value=0.9 if gate_passed else 0.1,
                                                                  passed=gate_passed)]),
            exports=built)
        resp = await stub.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(version=version))
    stored: registry_pb2.ModelVersion = resp.version
    return stored


async def _exports(store: ObjectStore, key: SigningKey, model: artifact.ScoringModel, tmp: Path, prefix: str,
                   model_name: str, tamper: str) -> list[registry_pb2.Export]:
    from loopline_core.signing import sign_dir  # noqa: PLC0415
    from loopline_ml.exports import export_onnx, quantize_int8  # noqa: PLC0415

    out = []
    fp32 = export_onnx(model, tmp / "onnx", model_name)
    quantize_int8(fp32, tmp / "onnx-int8", f"{model_name}_int8", model.n_features)
    for fmt, triton_name in (("onnx", model_name), ("onnx-int8", f"{model_name}_int8")):
        d = tmp / fmt
        sig = tmp / f"{fmt}.sig"
        key_id = sign_dir(d, key, sig)
        if tamper == fmt:
            onnx_file = d / triton_name / "1" / "model.onnx"
            raw = bytearray(onnx_file.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            onnx_file.write_bytes(bytes(raw))
        await store.put_dir("loopline-models", f"{prefix}/{fmt}/model", d)
        await store.put_bytes("loopline-models", f"{prefix}/{fmt}/model.sig", sig.read_bytes())
        out.append(registry_pb2.Export(format=fmt, uri=f"s3://loopline-models/{prefix}/{fmt}/model",
                                       signature_uri=f"s3://loopline-models/{prefix}/{fmt}/model.sig",
                                       signer_key_id=key_id, opset=17, triton_model_name=triton_name))
    return out


async def set_alias(registry_addr: str, model_name: str, alias: str, version: int) -> None:
    client = RegistryClient(registry_addr)
    try:
        await client.set_alias(model_name, alias, version, actor="test", reason="test")
    finally:
        await client.close()


FENCE = "x-test-fence"


async def read_fenced(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record on ``topic`` now: a fence is written to each partition and each is read up to it,
    which holds whatever a broker's end offsets say (fences are not returned)."""
    fence = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await producer.start()
    await c.start()
    out: list[Record] = []
    try:
        async with asyncio.timeout(timeout):
            while not (parts := c.partitions_for_topic(topic)):
                await c.topics()
                await asyncio.sleep(0.1)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            for tp in tps:
                await producer.send_and_wait(topic, b"", partition=tp.partition, headers=[(FENCE, fence)])
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            open_tps = set(tps)
            while open_tps:
                for tp, recs in (await c.getmany(*open_tps, timeout_ms=200)).items():
                    for r in recs:
                        headers = dict(r.headers or ())
                        if headers.get(FENCE) == fence:
                            open_tps.discard(tp)
                        elif FENCE not in headers and tp in open_tps:
                            out.append(Record.of(r))
    finally:
        await c.stop()
        await producer.stop()
    return out
