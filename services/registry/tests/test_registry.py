"""Registry against real Postgres and Kafka, over gRPC, as its own process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline_core import grpcx
from loopline_core.kafka import TopicNamer
from loopline_stack.services import ServiceSet
from loopline_testing.builders import read_topic


def _version(run_id: str, auc: float) -> pb.ModelVersion:
    return pb.ModelVersion(model_name="fraud", artifact_uri=f"s3://loopline-models/fraud/{run_id}/model",
                           signature_uri=f"s3://loopline-models/fraud/{run_id}/model.sig", signer_key_id="k1",
                           dataset_digest="d" * 64, run_id=run_id, metrics={"auc": auc}, feature_names=["a", "b"],
                           gate=pb.Gate(passed=True, summary="ok", checks=[
                               pb.GateCheck(metric="auc", kind="absolute", threshold=0.5, value=auc, passed=True)]))


async def test_versions_aliases_and_events(isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    svc = services("registry")
    async with grpcx.channel(svc.addr("registry")) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        v1 = (await stub.RegisterModelVersion(pb.RegisterModelVersionRequest(version=_version("r1", 0.8)))).version
        again = (await stub.RegisterModelVersion(pb.RegisterModelVersionRequest(version=_version("r1", 0.8)))).version
        v2 = (await stub.RegisterModelVersion(pb.RegisterModelVersionRequest(version=_version("r2", 0.9)))).version
        assert (v1.version, again.version, v2.version) == (1, 1, 2), "registration is idempotent on run_id"
        assert dict(v2.metrics) == {"auc": 0.9} and list(v2.feature_names) == ["a", "b"]

        moved = await stub.SetAlias(pb.SetAliasRequest(model_name="fraud", alias="champion", version=1, reason="first"))
        assert moved.previous_version == 0
        moved = await stub.SetAlias(pb.SetAliasRequest(model_name="fraud", alias="champion", version=2, reason="won"))
        assert moved.previous_version == 1
        resolved = await stub.ResolveAlias(pb.ResolveAliasRequest(model_name="fraud", alias="champion"))
        assert resolved.version.version == 2 and list(resolved.version.aliases) == ["champion"]
        listed = await stub.ListModelVersions(pb.ListModelVersionsRequest(model_name="fraud"))
        assert [v.version for v in listed.versions] == [1, 2]

        for call, code in [
            (stub.GetModelVersion(pb.GetModelVersionRequest(model_name="fraud", version=9)), grpc.StatusCode.NOT_FOUND),
            (stub.ResolveAlias(pb.ResolveAliasRequest(model_name="fraud", alias="challenger")),
             grpc.StatusCode.NOT_FOUND),
            (stub.SetAlias(pb.SetAliasRequest(model_name="fraud", alias="king", version=1)),
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetModelVersion(pb.GetModelVersionRequest(model_name="Bad Name!", version=1)),
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.RegisterModelVersion(pb.RegisterModelVersionRequest(version=pb.ModelVersion(model_name="fraud"))),
             grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == code

    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    events = [pb.ModelChanged.FromString(r.value) for r in
              await read_topic(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.model_events(), 7)]
    assert [(e.kind, e.version, e.stage) for e in events if e.kind == pb.MODEL_EVENT_KIND_STAGE_CHANGED] == [
        (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 1, pb.STAGE_PRODUCTION),
        (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 2, pb.STAGE_PRODUCTION),
        (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 1, pb.STAGE_DEPRECATED)], "production follows the champion"
    events = [e for e in events if e.kind != pb.MODEL_EVENT_KIND_STAGE_CHANGED]
    assert [(e.kind, e.version, e.alias, e.previous_version) for e in events] == [
        (pb.MODEL_EVENT_KIND_REGISTERED, 1, "", 0), (pb.MODEL_EVENT_KIND_REGISTERED, 2, "", 0),
        (pb.MODEL_EVENT_KIND_ALIAS_SET, 1, "champion", 0), (pb.MODEL_EVENT_KIND_ALIAS_SET, 2, "champion", 1)]


async def test_every_change_commits_with_its_event_and_the_relay_publishes_each_once(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    import asyncpg  # noqa: PLC0415

    svc = services("registry")
    async with grpcx.channel(svc.addr("registry")) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        for _ in range(2):  # a client retrying a call whose answer it lost
            await stub.RegisterModelVersion(pb.RegisterModelVersionRequest(version=_version("r1", 0.8)))
        await stub.SetAlias(pb.SetAliasRequest(model_name="fraud", alias="champion", version=1, reason="first"))
        with pytest.raises(grpc.aio.AioRpcError):  # a change that fails leaves no event behind
            await stub.SetAlias(pb.SetAliasRequest(model_name="fraud", alias="champion", version=7))

    conn = await asyncpg.connect(isolated["LOOPLINE_POSTGRES_DSN"])
    try:
        async with asyncio.timeout(30):
            while await conn.fetchval("select count(*) from registry.outbox where published_at is null"):
                await asyncio.sleep(0.1)
        rows = await conn.fetch("select event_id, message_type from registry.outbox order by seq")
    finally:
        await conn.close()
    assert len(rows) == 3 and {r["message_type"] for r in rows} == {"loopline.registry.v1.ModelChanged"}

    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    records = await read_topic(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.model_events(), 3)
    events = [pb.ModelChanged.FromString(r.value) for r in records]
    assert [(e.kind, e.version) for e in events] == [(pb.MODEL_EVENT_KIND_REGISTERED, 1),
                                                    (pb.MODEL_EVENT_KIND_ALIAS_SET, 1),
                                                    (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 1)]
    assert [e.metadata.event_id for e in events] == [r["event_id"] for r in rows]
    assert [r.header("x-loopline-event-id") for r in records] == [r["event_id"] for r in rows]
    assert {r.key for r in records} == {b"fraud"}, "keyed by the model, so its events stay in order"
