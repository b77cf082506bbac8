"""The whole loop on the real local stack, eight services as separate processes.

events in -> v1 trained, signed, registered, served -> tritonclient.grpc infer returns a score ->
drift injected -> alert -> v2 trained and promoted -> inference now reports v2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from loopline.monitor.v1.events_pb2 import AlertRaised, WindowEvaluated
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_cli.demo.run import service_env
from loopline_cli.demo.scenario import ScenarioConfig, ScenarioResult, run_scenario
from loopline_core import grpcx
from loopline_core.kafka import TopicNamer
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet
from loopline_testing.otlp import Receiver, SpanGraph, SpanRecord
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_the_loop_turns(isolated: dict[str, str], services: Callable[..., ServiceSet],
                              spans: InMemorySpanExporter) -> None:
    with Receiver() as otlp:  # every service exports its spans here, as to an OpenTelemetry collector
        svc = services(env={**service_env(), "*": {"LOOPLINE_OTEL_EXPORTER": "otlp",
                                                    "LOOPLINE_OTEL_ENDPOINT": otlp.endpoint}})
        await _loop_turns(isolated, svc)
        svc.stop()  # each service flushes its last spans as it exits
        _one_trace_end_to_end(SpanGraph([*otlp.spans(), *_upstream(spans.get_finished_spans())]),
                              TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"]))


async def _loop_turns(isolated: dict[str, str], svc: ServiceSet) -> None:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    result = await run_scenario(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer, svc.addr("feature"),
                                svc.addr("inference"), ScenarioConfig(deadline_s=360))
    seen, stats = result.observer.seen, result.traffic.stats
    kinds = [m.kind for m in seen.timeline]
    assert result.completed, f"the loop did not close: {[m.text for m in seen.timeline]}"

    # v1 was trained, signed, registered, promoted and served before the drift began
    assert kinds.index("registered") < kinds.index("drift")
    assert stats.by_version[1] >= 1200
    # the drift raised an alert, and a later version won on the same test set and was promoted
    assert seen.alerts >= 1 and kinds.index("drift") < kinds.index("alert", kinds.index("drift"))
    assert result.final_version >= 2 and seen.champion == result.final_version
    won = next(t for t in seen.trainings if t.succeeded and int(t.version) == result.final_version)
    assert won.gate_passed, won.gate_summary
    # the drift raised a feature-drift alert on v1; the retrain was triggered by v1's first alert after the
    # drift (feature drift, or the labels' performance drop when they arrive first: both are the drift's
    # doing, and which comes first is a race) and trained on data from that alert's onset on
    assert any(a.kind == "feature_drift" and a.model_version == 1 for a in seen.raised)
    requested = next(d for d in seen.retrains if d.decision == "requested")
    cause = next(a for a in seen.raised if a.episode_id == requested.cause_event_id)
    assert requested.trigger == cause.kind and cause.kind in {"feature_drift", "performance"}
    assert cause.model_version == 1
    assert abs(requested.window_start.ToNanoseconds() - cause.onset.ToNanoseconds()) < 1e6
    await _new_champion_watched_against_its_own_profile(isolated, namer, result)
    # bad input never stopped the stream: every malformed record reached the dead-letter topic
    assert stats.malformed > 0 and seen.dead_letters == stats.malformed

    # Triton's own client, unchanged, sees the promoted version
    client = grpcx.with_auth(triton_grpc.InferenceServerClient(svc.addr("inference")))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud")
    meta = client.get_model_metadata("fraud")
    assert meta.versions == [str(result.final_version)]
    x = np.asarray([[120.0, np.log1p(120.0), 3.0, 40.0, 120.0 / 41.0, 1.0, 1.0]], dtype=np.float32)
    inp = triton_grpc.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("fraud", [inp], outputs=[triton_grpc.InferRequestedOutput("score")])
    score = out.as_numpy("score")
    assert score.shape == (1, 1) and 0.0 <= float(score[0][0]) <= 1.0
    assert out.get_response().model_version == str(result.final_version)

    # the registry agrees, and every version carries a signature by a known key
    with grpcx.sync_channel(svc.addr("registry")) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        champion = stub.ResolveAlias(registry_pb2.ResolveAliasRequest(model_name="fraud", alias="champion")).version
        versions = stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(model_name="fraud")).versions
    assert champion.version == result.final_version
    assert all(v.signature_uri.endswith("model.sig") and v.signer_key_id for v in versions)

    # ... and holds the evidence the promotion rested on: a gate that passed against the champion it
    # replaced, slices, signed exports, a model card and the run's provenance
    previous = next(v for v in versions if v.version != champion.version and v.stage == registry_pb2.STAGE_DEPRECATED)
    assert champion.stage == registry_pb2.STAGE_PRODUCTION
    assert champion.gate.passed and champion.gate.champion_version == previous.version
    assert champion.gate.checks and all(c.passed for c in champion.gate.checks)
    assert {e.format for e in champion.exports} == {"onnx", "onnx-int8"}
    assert all(e.signature_uri and e.signer_key_id for e in champion.exports)
    assert any(s.slice.startswith("country=") for s in champion.slices)
    assert champion.model_card_uri.endswith("card.json")
    assert champion.run.git_commit and champion.run.dataset_digest == champion.dataset_digest
    assert len(champion.run.trajectory) > 1


def _upstream(finished: Sequence[ReadableSpan]) -> list[SpanRecord]:
    """The test process's own spans (the upstream application: one trace per transaction)."""
    return [SpanRecord("upstream", s.name, f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}",
                       f"{s.parent.span_id:016x}" if s.parent else "", int(s.kind.value),
                       tuple((f"{ln.context.trace_id:032x}", f"{ln.context.span_id:016x}") for ln in s.links),
                       dict(s.attributes or {}))
            for s in finished if s.context is not None]


def _one_trace_end_to_end(g: SpanGraph, namer: TopicNamer) -> None:
    """One upstream transaction's trace reaches, by parents and links across Kafka and gRPC: ingest ->
    validator -> feature (its event), and inference (its scoring call) -> the monitor's batch that raised
    the drift alert -> the retrainer's decision -> training -> registration -> the promotion."""
    def services_upstream(span: SpanRecord) -> dict[str, set[str]]:
        by_service: dict[str, set[str]] = {}
        for sid in g.upstream(span):
            if (s := g.by_id.get(sid)) is not None:
                by_service.setdefault(s.service, set()).add(s.name)
        return by_service

    authorised = {s.span_id for s in g.named("upstream", "authorise transaction")}
    assert authorised, "the upstream application traced its transactions"
    # the event's own path: the feature service's consumption of validated events leads back to
    # the validator, ingest and the transaction that produced it
    featurised = [s for s in g.named("feature") if s.name.startswith(namer.valid("transactions"))]
    event_roots: set[str] = set()
    for s in featurised:
        up = services_upstream(s)
        if {"validator", "ingest"} <= up.keys():
            event_roots |= g.upstream(s) & authorised
    assert event_roots, "no feature-service span leads back through validator and ingest to a transaction"

    # the promotion: a champion alias move whose upstream holds the whole loop
    promotions = [s for s in g.named("registry") if "SetAlias" in s.name]
    missing: list[list[str]] = []
    for s in promotions:
        ids = g.upstream(s)
        names = {g.by_id[i].service + ":" + g.by_id[i].name for i in ids if i in g.by_id}
        trainings = {i for i in ids if i in g.by_id and g.by_id[i].service == "trainer"}
        registered = any(trainings & {a.span_id for a in g.ancestors(r)}
                         for r in g.named("registry") if "RegisterModel" in r.name)
        checks = {"the alert's handling": any(n.startswith(f"retrainer:{namer.alerts()}") for n in names),
                  "training": any(n.startswith(f"trainer:{namer.training_requests()}") for n in names),
                  "registration": registered,
                  "the monitor": any(n.startswith("monitor:") for n in names),
                  "a scoring call": any(n.startswith("inference:") and "ModelInfer" in n for n in names),
                  "a transaction whose event reached the feature service": bool(ids & event_roots)}
        missing.append([k for k, ok in checks.items() if not ok])
    assert [] in missing, f"no alias move leads back through the whole loop; each lacks: {missing}"


async def _new_champion_watched_against_its_own_profile(isolated: dict[str, str], namer: TopicNamer,
                                                        result: ScenarioResult) -> None:
    """The new champion is watched against its own training profile: live traffic after the drift is what it
    learned, so the windows after its promotion raise no feature-drift alarm (read once the monitor has taken
    in every prediction: it may trail the scenario's end). Its prediction reference is its scores on ~600
    held-out rows, where Evidently picks KS at 5 %: a chance prediction_drift warning stays possible there."""
    new, bootstrap = result.final_version, isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    promoted = result.promoted_at or 0.0
    settled = {namer.group("monitor"): [namer.predictions("fraud")]}
    evaluations = [WindowEvaluated.FromString(r.value)
                   for r in await quiet(bootstrap, namer.evaluations(), 0, wait_s=0, settled=settled)]
    raised = [AlertRaised.FromString(r.value) for r in await quiet(bootstrap, namer.alerts(), 0, wait_s=0)
              if r.header(MESSAGE_TYPE) == AlertRaised.DESCRIPTOR.full_name]
    after = [w for w in evaluations if w.model_version == new and w.window.startswith("count:")
             and w.window_start.ToNanoseconds() / 1e9 >= promoted]
    assert promoted and after, f"v{new}'s windows after its promotion were evaluated"
    alarms = [(a.kind, a.summary) for a in raised if a.model_version == new and a.kind == "feature_drift"
              and a.window_start.ToNanoseconds() / 1e9 >= promoted]
    assert not alarms, alarms
    # the monitor's own rolling AUC from delayed labels, per version
    assert any(w.window.startswith("labels:") and "auc_roc" in w.metrics for w in evaluations)
