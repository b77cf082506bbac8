"""Models, stages, gated and approved champion moves, compare-and-set, rollback, audit and lineage,
against the real registry process (one per test)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline_core import grpcx
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import TopicNamer
from loopline_core.registry import RegistryClient
from loopline_stack.services import ServiceSet
from loopline_testing.builders import read_topic

FAILING = pb.GateCheck(metric="recall_at_1pct_fpr", slice="country=DE", kind="change", threshold=-0.02,
                       value=-0.2, passed=False)


def _version(model: str, run_id: str, *, passed: bool = True, dataset: str = "") -> pb.ModelVersion:
    checks = [pb.GateCheck(metric="auc", kind="absolute", threshold=0.5, value=0.9, passed=True)]
    v = pb.ModelVersion(model_name=model, artifact_uri=f"s3://loopline-models/{model}/{run_id}/model",
                        signature_uri=f"s3://loopline-models/{model}/{run_id}/model.sig", signer_key_id="k1",
                        dataset_digest="d" * 64, run_id=run_id, metrics={"auc": 0.9}, feature_names=["a"],
                        stage=pb.STAGE_PRODUCTION,  # ignored: a new version is a candidate
                        gate=pb.Gate(passed=passed, checks=checks if passed else [*checks, FAILING],
                                     summary="ok" if passed else "slice regression"))
    if dataset:
        v.run.CopyFrom(pb.Run(run_id=run_id, dataset=dataset, dataset_uri="s3://loopline-datasets/ts/data.parquet",
                              dataset_manifest_uri="s3://loopline-datasets/ts/manifest.json",
                              dataset_digest="e" * 64, feature_view="fraud_v1", dataset_as_of=Timestamp(seconds=300),
                              data_from=Timestamp(seconds=100), data_to=Timestamp(seconds=200), seed=7))
    return v


async def _refused(call: object, kind: ErrorKind, *words: str) -> LooplineError:
    with pytest.raises(LooplineError) as err:
        await call  # type: ignore[misc]
    assert err.value.kind is kind, err.value
    for w in words:
        assert w in err.value.message, err.value.message
    return err.value


async def _stages(rc: RegistryClient, model: str) -> dict[int, int]:
    return {v.version: v.stage for v in await rc.versions(model, include_deleted=True)}


async def _lineage(rc: RegistryClient, winner: int, loser: int) -> None:
    # lineage: archive window, snapshot and run from the version's run, and every move to or from it
    lin = await rc.lineage("fraud", loser)
    assert (lin.archive.dataset, lin.archive.uri) == ("transactions", "s3://loopline-raw/lake/transactions/")
    assert (getattr(lin.archive, "from").seconds, lin.archive.to.seconds) == (100, 200)
    assert (lin.snapshot.uri, lin.snapshot.manifest_uri, lin.snapshot.digest, lin.snapshot.feature_view,
            lin.snapshot.as_of.seconds) == ("s3://loopline-datasets/ts/data.parquet",
                                            "s3://loopline-datasets/ts/manifest.json", "e" * 64, "fraud_v1", 300)
    assert (lin.run.seed, lin.version.version, lin.version.gate.passed) == (7, loser, True)
    assert [(c.action, c.from_version, c.to_version) for c in lin.alias_changes] == [
        ("set", winner, loser), ("set", loser, 3), ("rollback", 3, loser), ("rollback", loser, winner)]


async def _delete_models(rc: RegistryClient, winner: int) -> None:
    # a model with an alias cannot be deleted; without, it is soft-deleted and refuses registrations
    await _refused(rc.delete_model("fraud", actor="ops", reason="r"), ErrorKind.FAILED_PRECONDITION, "champion")
    assert (await rc.model("fraud")).aliases == {"champion": winner}
    await rc.register(_version("churn", "c1"))
    await rc.delete_model("churn", actor="ops", reason="unused")
    assert [m.name for m in await rc.models()] == ["fraud"]
    await _refused(rc.model("churn"), ErrorKind.NOT_FOUND)
    await _refused(rc.register(_version("churn", "c2")), ErrorKind.FAILED_PRECONDITION, "deleted")
    await rc.apply_model(pb.Model(name="churn"), actor="ops")
    assert (await rc.register(_version("churn", "c2"))).version == 2, "applied again: versions continue"


async def test_models_compare_and_set_rollback_history_and_lineage(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    addr = services("registry", env={"registry": {"LOOPLINE_ARCHIVE_PREFIX": "/lake/"}}).addr("registry")
    rc = RegistryClient(addr)
    try:
        # models: auto-created by a registration, applied (idempotently), listed with aliases and latest version
        for i in (1, 2, 3, 4):
            v = await rc.register(_version("fraud", f"r{i}", dataset="transactions"))
            assert (v.version, v.stage) == (i, pb.STAGE_CANDIDATE)
        m = pb.Model(name="fraud", description="card fraud", owner="risk", intended_use="scoring")
        first, again = await rc.apply_model(m, actor="ops"), await rc.apply_model(m, actor="ops")
        assert (again.description, again.owner, again.latest_version) == ("card fraud", "risk", 4)
        assert first.updated_at == again.updated_at, "applying the same spec again changes nothing"

        # compare-and-set: two movers with the same view race; exactly one wins, the other learns who did
        async with grpcx.channel(addr) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            results = await asyncio.gather(*(stub.SetAlias(pb.SetAliasRequest(
                model_name="fraud", alias="champion", version=n, expected_version=0, actor=f"mover{n}",
                reason="race")) for n in (1, 2)), return_exceptions=True)
        won = [r for r in results if isinstance(r, pb.SetAliasResponse)]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1, results
        winner = won[0].version.version
        assert lost[0].code() == grpc.StatusCode.ABORTED and f"held by v{winner}" in (lost[0].details() or "")
        assert ("x-loopline-current-version", str(winner)) in list(lost[0].trailing_metadata() or ())
        loser = 3 - winner
        err = await _refused(rc.set_alias("fraud", "champion", 3, actor="a", reason="r", expected=loser),
                             ErrorKind.ABORTED, f"held by v{winner}")
        assert err.details["current_version"] == str(winner)

        # v(winner) -> v(loser) -> v3, then roll back twice: it walks back, it does not toggle
        await rc.set_alias("fraud", "champion", loser, actor="alice", reason="better", expected=winner,
                           evidence=json.dumps({"decision": "promote", "auc": 0.93}))
        again_v, again_prev = await rc.set_alias("fraud", "champion", loser, actor="alice", reason="redelivered",
                                                 expected=winner)
        assert (again_v.version, again_prev) == (loser, loser), "the holder already: a no-op success"
        await rc.set_alias("fraud", "champion", 3, actor="bob", reason="newest")
        back, left = await rc.rollback("fraud", "champion", actor="sre", reason="alerts", expected=3)
        assert (back.version, left, back.stage) == (loser, 3, pb.STAGE_PRODUCTION)
        back, left = await rc.rollback("fraud", "champion", actor="sre", reason="still bad")
        assert (back.version, left) == (winner, loser)
        await _refused(rc.rollback("fraud", "champion", actor="sre", reason="again"), ErrorKind.FAILED_PRECONDITION,
                       "no holder before")
        assert await _stages(rc, "fraud") == {winner: pb.STAGE_PRODUCTION, loser: pb.STAGE_DEPRECATED,
                                              3: pb.STAGE_DEPRECATED, 4: pb.STAGE_CANDIDATE}

        history = await rc.history("fraud", "champion")
        assert [(c.action, c.from_version, c.to_version, c.actor) for c in history] == [
            ("rollback", loser, winner, "sre"), ("rollback", 3, loser, "sre"), ("set", loser, 3, "bob"),
            ("set", winner, loser, "alice"), ("set", 0, winner, f"mover{winner}")], "newest first, no-op not audited"
        assert [c.reason for c in await rc.history("fraud", limit=2)] == ["still bad", "alerts"]
        promoted = history[3]
        assert promoted.at.seconds > 0 and promoted.reason == "better"
        evidence = json.loads(promoted.evidence)
        assert evidence["caller"] == {"decision": "promote", "auc": 0.93} and evidence["gate"]["passed"] is True

        await _lineage(rc, winner, loser)
        await _delete_models(rc, winner)
    finally:
        await rc.close()


async def test_retired_gate_and_approval(isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    addr = services("registry").addr("registry")
    rc = RegistryClient(addr)
    try:
        for i in (1, 2, 3):
            await rc.register(_version("fraud", f"r{i}"))
        bad = await rc.register(_version("fraud", "r4", passed=False))

        # the gate refuses a version that failed it, naming the check; an override moves it, on the record
        await _refused(rc.set_alias("fraud", "champion", bad.version, actor="a", reason="try"),
                       ErrorKind.FAILED_PRECONDITION, "gate", "recall_at_1pct_fpr", "country=DE")
        await rc.set_alias("fraud", "champion", 1, actor="a", reason="first")
        await rc.set_alias("fraud", "champion", bad.version, actor="cto", reason="hotfix",
                           override_reason="fixes incident 42 despite DE")
        last = (await rc.history("fraud", "champion", limit=1))[0]
        assert (last.to_version, last.override_reason) == (bad.version, "fixes incident 42 despite DE")
        assert json.loads(last.evidence)["gate"]["passed"] is False
        await rc.rollback("fraud", "champion", actor="sre", reason="undo the override")

        # retired: terminal, never an alias (override or not), and a holder cannot be retired
        await _refused(rc.set_stage("fraud", 1, "retired", actor="sre", reason="r"), ErrorKind.FAILED_PRECONDITION,
                       "move the alias first")
        await _refused(rc.delete_version("fraud", 1, actor="sre", reason="r"), ErrorKind.FAILED_PRECONDITION)
        retired = await rc.set_stage("fraud", 2, "retired", actor="sre", reason="bad weights")
        assert retired.stage == pb.STAGE_RETIRED
        await _refused(rc.set_alias("fraud", "challenger", 2, actor="a", reason="r", override_reason="x"),
                       ErrorKind.FAILED_PRECONDITION, "retired")
        await _refused(rc.set_stage("fraud", 2, "candidate", actor="a", reason="r"), ErrorKind.FAILED_PRECONDITION,
                       "retired")
        await _refused(rc.set_stage("fraud", 3, "production", actor="a", reason="r"), ErrorKind.FAILED_PRECONDITION)
        async with grpcx.channel(addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as rpc_err:
                await registry_pb2_grpc.RegistryServiceStub(ch).SetStage(pb.SetStageRequest(model_name="fraud",
                                                                                            version=3))
            assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # 2 -> 3, retire... no: 2 is retired; make 3 champion then roll back to 1 works, retire 1, rollback refused
        await rc.set_alias("fraud", "champion", 3, actor="a", reason="r")
        await rc.set_alias("fraud", "champion", 1, actor="a", reason="r")  # 1 now follows 3
        await rc.set_stage("fraud", 3, "retired", actor="sre", reason="tampered")
        await _refused(rc.rollback("fraud", "champion", actor="sre", reason="back"), ErrorKind.FAILED_PRECONDITION,
                       "v3", "retired")
        gone = await rc.delete_version("fraud", bad.version, actor="sre", reason="cleanup")
        assert gone.stage == pb.STAGE_RETIRED
        assert [v.version for v in await rc.versions("fraud")] == [1, 2, 3]
        assert len(await rc.versions("fraud", include_deleted=True)) == 4

        # a model whose policy wants a human: staged, approved, champion, in one approval
        await rc.apply_model(pb.Model(name="loan", requires_approval=True), actor="ops")
        l1, l2 = await rc.register(_version("loan", "l1")), await rc.register(_version("loan", "l2"))
        await _refused(rc.set_alias("loan", "champion", l1.version, actor="a", reason="r"),
                       ErrorKind.FAILED_PRECONDITION, "approv")
        await _refused(rc.approve("loan", l1.version, actor="a", reason="r"), ErrorKind.FAILED_PRECONDITION, "staging")
        await rc.set_stage("loan", l1.version, "staging", actor="ml", reason="gated")
        await rc.set_stage("loan", l2.version, "staging", actor="ml", reason="gated")
        v, previous = await rc.approve("loan", l1.version, actor="carol", reason="reviewed", expected_champion=0)
        assert (v.stage, previous, v.approval.actor, v.approval.reason) == (pb.STAGE_PRODUCTION, 0, "carol",
                                                                            "reviewed")
        assert v.approval.at.seconds > 0 and list(v.aliases) == ["champion"]
        await _refused(rc.approve("loan", l2.version, actor="dave", reason="r", expected_champion=0),
                       ErrorKind.ABORTED, f"held by v{l1.version}")
        assert (await rc.history("loan"))[0].action == "approve"
    finally:
        await rc.close()

    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    events = [pb.ModelChanged.FromString(r.value) for r in
              await read_topic(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.model_events(), 29)]
    loan = [(e.kind, e.version, e.action, e.actor) for e in events if e.model_name == "loan"
            and e.kind in (pb.MODEL_EVENT_KIND_APPROVED, pb.MODEL_EVENT_KIND_ALIAS_SET)]
    assert loan == [(pb.MODEL_EVENT_KIND_APPROVED, l1.version, "approve", "carol"),
                    (pb.MODEL_EVENT_KIND_ALIAS_SET, l1.version, "approve", "carol")]
