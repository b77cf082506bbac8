"""The rollout controller as its own process, fed prediction rows and labels directly: a bad canary is
rolled back, a good one promoted, each decision a RolloutDecided with its evidence. (tests/e2e/
test_rollout.py drives the same through inference's real routing.)"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.registry.v1 import registry_pb2 as pb
from loopline.retrainer.v1.events_pb2 import RolloutDecided
from loopline.trainer.v1.events_pb2 import TrainingCompleted
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_core.registry import RegistryClient
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, register_signed_model, set_alias

ROLLOUT_TYPE = RolloutDecided.DESCRIPTOR.full_name
LOOPLINE = str(Path(sys.executable).parent / "loopline")
POLICY = pb.RolloutPolicy(mode="canary", canary_share=0.3, sticky_by="entity", alpha=0.05, min_samples=150,
                          latency_budget_ms=50, min_duration_s=1, max_duration_s=0)


async def rollout_events(bootstrap: str, namer: TopicNamer, count: int, timeout: float = 90) -> list[RolloutDecided]:
    """The first ``count`` RolloutDecided on the model events topic (other kinds skipped by their type header)."""
    async with asyncio.timeout(timeout):
        while True:
            records = await quiet(bootstrap, namer.model_events(), 0, wait_s=0)
            found = [RolloutDecided.FromString(r.value) for r in records if r.header(MESSAGE_TYPE) == ROLLOUT_TYPE]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.5)


def row(event_id: str, version: int, score: float, *, role: str, latency_ms: float = 5.0,
        error: str = "") -> bytes:
    return PredictionLogged(metadata=metadata("test", event_id), model_name="fraud", model_version=version,
                            request_id=event_id, entity_id=f"c{event_id}", feature_names=["a"], inputs=[1.0],
                            outputs=[] if error else [score], latency_ms=latency_ms, role=role,
                            error=error).SerializeToString()


async def serve(publisher: Publisher, namer: TopicNamer, run: str, n: int, champion: int, challenger: int,
                *, challenger_inverted: bool) -> None:
    """``n`` labelled requests, every third one answered by the challenger, then their labels (every
    tenth is fraud, scored high by a good model); a share of rows is delivered twice."""
    labels = []
    for i in range(n):
        eid, fraud = f"{run}-{i}", i % 10 == 0
        good = 0.9 if fraud else 0.1
        on_challenger = i % 3 == 0
        version = challenger if on_challenger else champion
        score = 1 - good if on_challenger and challenger_inverted else good
        value = row(eid, version, score, role="challenger" if on_challenger else "champion")
        await publisher.publish(namer.predictions("fraud"), value, key=eid,
                                message_type="loopline.inference.v1.PredictionLogged")
        if i % 7 == 0:  # redelivered: counted once
            await publisher.publish(namer.predictions("fraud"), value, key=eid,
                                    message_type="loopline.inference.v1.PredictionLogged")
        labels.append((eid, int(fraud)))
    for eid, label in labels:
        await publisher.publish(namer.labels("transactions"), f'{{"event_id": "{eid}", "label": {label}}}'.encode(),
                                key=eid, content_type="application/json")


async def result(publisher: Publisher, namer: TopicNamer, event_id: str, version: int) -> None:
    msg = TrainingCompleted(metadata=metadata("test", event_id), model_name="fraud", version=str(version),
                            succeeded=True, metrics={"auc": 0.9})
    await publisher.publish(namer.training_results(), msg.SerializeToString(), key="fraud")


async def wait_for(check: Callable[[], object], what: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[misc]
            await asyncio.sleep(0.3)


async def test_bad_canary_rolled_back_good_one_promoted(isolated: dict[str, str],
                                                        services: Callable[..., ServiceSet],
                                                        publisher: Publisher) -> None:
    svc = services("registry", "retrainer", env={"retrainer": {"LOOPLINE_RETRAINER_ROLLOUT_CHECK_S": "1"}})
    addr, bootstrap = svc.addr("registry"), isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    rc = RegistryClient(addr)
    try:
        v1 = await register_signed_model(isolated, addr, "fraud", seed=1)
        await set_alias(addr, "fraud", "champion", v1.version)
        await rc.apply_model(pb.Model(name="fraud", rollout=POLICY), actor="test")

        # a gated v2 becomes the challenger, not the champion
        v2 = await register_signed_model(isolated, addr, "fraud", seed=2, gate_champion=v1.version)
        await result(publisher, namer, "result-2", v2.version)
        await result(publisher, namer, "result-2", v2.version)  # redelivered: one rollout
        started = (await rollout_events(bootstrap, namer, 1))[0]
        assert (started.decision, started.mode, started.champion_version, started.challenger_version) == \
            ("started", "canary", v1.version, v2.version)
        assert (await rc.model("fraud")).aliases == {"champion": v1.version, "challenger": v2.version}

        # v2 scores inverted: the labels show it, and it is rolled back with the evidence
        await serve(publisher, namer, "bad", 300, v1.version, v2.version, challenger_inverted=True)
        events = await rollout_events(bootstrap, namer, 2)
        back = events[1]
        assert (back.decision, back.challenger_version) == ("rolled_back", v2.version), back
        assert "label_error_rate" in back.reason
        signals = {s.name: s for s in back.signals}
        label = signals["label_error_rate"]
        assert label.verdict == "worse" and label.worse_ratio >= label.threshold
        assert label.challenger_events > label.champion_events
        assert signals["error_rate"].challenger_n <= 100, "a redelivered row counts once"
        assert (await rc.model("fraud")).aliases == {"champion": v1.version}, "the champion stays"
        assert (await rc.get("fraud", v2.version)).stage == pb.STAGE_DEPRECATED

        # a good v3 goes through the same canary and is promoted by compare-and-set on v1
        v3 = await register_signed_model(isolated, addr, "fraud", seed=3, gate_champion=v1.version)
        await result(publisher, namer, "result-3", v3.version)
        await rollout_events(bootstrap, namer, 3)
        await serve(publisher, namer, "good", 900, v1.version, v3.version, challenger_inverted=False)
        events = await rollout_events(bootstrap, namer, 4, timeout=120)
        done = events[3]
        assert (done.decision, done.challenger_version) == ("promoted", v3.version), done
        assert all(s.verdict == "not_worse" and s.not_worse_ratio >= s.threshold for s in done.signals)
        assert min(min(s.champion_n, s.challenger_n) for s in done.signals) >= POLICY.min_samples
        assert (await rc.model("fraud")).aliases == {"champion": v3.version}
        history = await rc.history("fraud", "champion")
        assert (history[0].from_version, history[0].to_version, history[0].actor) == \
            (v1.version, v3.version, "retrainer-rollout")
        assert "not worse" in history[0].reason

        # the command line shows the policy, the arms and the last step
        proc = await asyncio.create_subprocess_exec(
            LOOPLINE, "model", "rollout", "fraud", "--registry", addr, "--json", stdout=asyncio.subprocess.PIPE)
        shown = json.loads((await proc.communicate())[0])
        assert shown["rollout"]["mode"] == "canary" and shown["arms"] == {"champion": v3.version}
        assert shown["last"]["reason"].startswith("promoted to champion: not worse")
    finally:
        await rc.close()


async def test_undecided_rollout_times_out_and_a_moved_champion_is_not_overwritten(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc = services("registry", "retrainer", env={"retrainer": {"LOOPLINE_RETRAINER_ROLLOUT_CHECK_S": "1"}})
    addr, bootstrap = svc.addr("registry"), isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    rc = RegistryClient(addr)
    try:
        v1 = await register_signed_model(isolated, addr, "fraud", seed=1)
        await set_alias(addr, "fraud", "champion", v1.version)
        brief = pb.RolloutPolicy(mode="shadow", min_samples=50, min_duration_s=1, max_duration_s=3)
        await rc.apply_model(pb.Model(name="fraud", rollout=brief), actor="test")

        # no traffic at all: undecided after max_duration_s, so rolled back (by the periodic check)
        v2 = await register_signed_model(isolated, addr, "fraud", seed=2, gate_champion=v1.version)
        await result(publisher, namer, "result-2", v2.version)
        events = await rollout_events(bootstrap, namer, 2)
        assert [(e.decision, e.mode) for e in events] == [("started", "shadow"), ("rolled_back", "shadow")]
        assert "no decision within 3s" in events[1].reason and events[1].elapsed_s >= 3
        assert (await rc.model("fraud")).aliases == {"champion": v1.version}

        # an SRE moves the champion during a rollout: the evidence compared against v1 promotes nothing
        await rc.apply_model(pb.Model(name="fraud", rollout=POLICY), actor="test")
        v3 = await register_signed_model(isolated, addr, "fraud", seed=3, gate_champion=v1.version)
        await result(publisher, namer, "result-3", v3.version)
        await rollout_events(bootstrap, namer, 3)
        v4 = await register_signed_model(isolated, addr, "fraud", seed=4, gate_champion=v1.version)
        await rc.set_alias("fraud", "champion", v4.version, actor="sre", reason="hotfix", expected=v1.version)
        await serve(publisher, namer, "good", 600, v1.version, v3.version, challenger_inverted=False)
        last = (await rollout_events(bootstrap, namer, 4))[3]
        assert last.decision == "rolled_back" and f"champion moved from v{v1.version} to v{v4.version}" in last.reason
        assert (await rc.model("fraud")).aliases == {"champion": v4.version}, "the SRE's move stands"
    finally:
        await rc.close()
