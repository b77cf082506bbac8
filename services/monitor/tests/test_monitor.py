"""The monitor as its own process against the real broker, Postgres, S3 store and registry.

Scenarios: no drift (silence), covariate shift (an alert within a few windows, with Evidently's
report), a new category (a data-quality alert), concept drift seen only through delayed labels (a
performance alert); a restart with redelivered predictions counts nothing twice; bad predictions
and labels go to the dead letters with the reason and the monitor goes on.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.labels.v1.label_pb2 import Label
from loopline.monitor.v1.events_pb2 import AlertRaised, WindowEvaluated
from loopline.trainer.v1.events_pb2 import TrainingRequested
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.records import DLQ_REASON, MESSAGE_TYPE
from loopline_core.objstore import ObjectStore
from loopline_ml.spec import default_dir
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, quiet, register_signed_model, transactions

WINDOWS = {"LOOPLINE_MONITOR_WINDOWS": '["count:1000/200"]', "LOOPLINE_MONITOR_REPEAT_S": "3600",
           "LOOPLINE_MONITOR_REPORT_EVERY": "0", "LOOPLINE_MONITOR_PERF_EVERY": "100",
           "LOOPLINE_MONITOR_PERF_MIN": "200", "LOOPLINE_MONITOR_LABEL_TTL_S": "2",
           "LOOPLINE_MONITOR_LABEL_SWEEP_S": "1"}
MODEL = make_model(0)


def _type(r: Record) -> str:
    return r.header(MESSAGE_TYPE) or ""


class Feed:
    """Publishes predictions (and labels) as inference (and a label producer) would."""

    def __init__(self, publisher: Publisher, namer: TopicNamer, version: int) -> None:
        self.publisher = publisher
        self.namer = namer
        self.version = version
        self.t0 = time.time() - 3600

    async def predictions(self, x: np.ndarray, first: int, *, version: int | None = None,
                          scores: np.ndarray | None = None) -> list[str]:
        s = MODEL.predict(x.astype(np.float32)).ravel() if scores is None else scores
        ids = []
        for i, (row, score) in enumerate(zip(x, s, strict=True)):
            rid = f"e{first + i}"
            p = PredictionLogged(metadata=metadata("test", f"p{first + i}", occurred_at=self.t0 + first + i),
                                 model_name="fraud", model_version=version or self.version, request_id=rid,
                                 feature_names=FEATURES, inputs=row.tolist(), outputs=[float(score)], latency_ms=2.0,
                                 role="champion", variant="torch")
            await self.publisher.publish(self.namer.predictions("fraud"), p.SerializeToString(), key=rid)
            ids.append(rid)
        return ids

    async def labels(self, ids: list[str], values: np.ndarray) -> None:
        for rid, v in zip(ids, values, strict=True):
            lab = Label(metadata=metadata("test", f"l-{rid}"), dataset="transactions", event_id=rid, value=float(v))
            await self.publisher.publish(self.namer.labels("transactions"), lab.SerializeToString(), key=rid)


async def _events(isolated: dict[str, str], topic: str, labels: bool = False) -> list[Record]:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    settled = {namer.group("monitor"): [namer.predictions("fraud")]}
    if labels:
        settled[namer.group("monitor-labels")] = [namer.labels("transactions")]
    return await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], topic, 0, wait_s=0, settled=settled)


async def _alerts(isolated: dict[str, str], labels: bool = False) -> list[AlertRaised]:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    return [AlertRaised.FromString(r.value) for r in await _events(isolated, namer.alerts(), labels)
            if _type(r) == "loopline.monitor.v1.AlertRaised"]


async def _windows(isolated: dict[str, str], labels: bool = False) -> list[WindowEvaluated]:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    return [WindowEvaluated.FromString(r.value) for r in await _events(isolated, namer.evaluations(), labels)]


async def test_no_drift_is_silent_then_shift_and_new_category_alert(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    svc = services("registry", "monitor", env={"monitor": WINDOWS})
    rng = np.random.default_rng(5)
    v1 = await register_signed_model(isolated, svc.addr("registry"), "fraud", reference_x=transactions(3000, rng))
    v2 = await register_signed_model(isolated, svc.addr("registry"), "fraud", reference_x=transactions(3000, rng))
    feed = Feed(publisher, TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"]), v1.version)

    # no drift: six windows of the reference's own distribution, not one alert
    await feed.predictions(transactions(2000, rng), 0)
    assert await _alerts(isolated) == [], "no drift, no alert"
    clean = await _windows(isolated)
    assert len(clean) == 6 and all(w.window == "count:1000/200" and w.window_size == 1000 for w in clean)
    assert all(len(w.columns) == len(FEATURES) and w.prediction.stattest for w in clean)
    assert {c.stattest for w in clean for c in w.columns} >= {"wasserstein", "jensenshannon"}, \
        "Evidently's defaults for a reference over 1000 rows: Wasserstein (numeric), Jensen-Shannon (categorical)"
    last_clean_end = max(w.window_end.ToNanoseconds() / 1e9 for w in clean)

    # covariate shift: bigger amounts, more night-time and more transactions per day
    await feed.predictions(transactions(1000, rng, amount_scale=2.5, night=0.5, extra_txns=3), 2000)
    alerts = await _alerts(isolated)
    drift = [a for a in alerts if a.kind == "feature_drift"]
    assert len({a.episode_id for a in drift}) == 1, f"one episode, got {[(a.kind, a.summary) for a in alerts]}"
    a = drift[0]
    assert a.model_version == v1.version and a.severity in ("warning", "critical") and a.repeat == 1
    # within the hour-long repeat interval, only an escalation to critical says it again
    assert all(r.repeat == i + 2 and r.severity == "critical" for i, r in enumerate(drift[1:])) and len(drift) <= 2
    windows = [w for w in await _windows(isolated) if w.model_version == v1.version]
    shifted = [w for w in windows if w.window_end.ToNanoseconds() / 1e9 >= feed.t0 + 2000]
    raised_at = next(i for i, w in enumerate(shifted) if w.metadata.event_id == a.metadata.correlation_id)
    assert raised_at < 3, "detected within three windows of the shift"
    drifted = {c.column for c in a.columns if c.drifted}
    assert {"amount", "log_amount", "txn_count_24h", "night"} <= drifted, drifted
    assert a.value >= 0.5 and a.threshold in (0.5, 0.75)
    onset = a.onset.ToNanoseconds() / 1e9
    assert last_clean_end <= onset <= feed.t0 + 2000 + 1000, "onset: where the last clean window ended"
    store = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                        isolated["LOOPLINE_S3_SECRET_KEY"])
    bucket, key = a.report_uri.removeprefix("s3://").split("/", 1)
    deadline = time.monotonic() + 60  # rendered off the consumer path, shortly after the alert
    while not await store.exists(bucket, a.report_json_uri.removeprefix("s3://").split("/", 1)[1]):
        assert time.monotonic() < deadline, "Evidently's report of the alerting window was stored"
        await asyncio.sleep(0.5)
    html = (await store.get_bytes(bucket, key)).decode()
    assert "<html" in html and "amount" in html and "Drift" in html, "Evidently's own HTML report of that window"
    bucket, key = a.report_json_uri.removeprefix("s3://").split("/", 1)
    body = json.loads(await store.get_bytes(bucket, key))
    evidently = {x["config"]["column"]: x["value"] for x in body["metrics"]
                 if x["metric_name"].startswith("ValueDrift")}
    ours = {c.column: c.score for c in a.columns}
    assert set(ours) <= set(evidently) and all(abs(evidently[c] - v) < 1e-6 for c, v in ours.items()), \
        "the monitor's statistics are Evidently's own on that window"

    # a new category on another version: risky_category takes a value its reference never had
    x = transactions(1400, rng)
    x[:, FEATURES.index("risky_category")] = 2.0
    await feed.predictions(x, 5000, version=v2.version)
    quality = [a for a in await _alerts(isolated) if a.model_version == v2.version]
    assert [a.kind for a in quality] == ["data_quality"] and quality[0].severity == "critical"
    v2_windows = [w for w in await _windows(isolated) if w.model_version == v2.version]
    assert v2_windows and all(c.drifted for w in v2_windows for c in w.columns if c.column == "risky_category")


async def test_labels_join_from_either_side_and_concept_drift_alerts_then_retrains(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher, tmp_path: Path) -> None:
    # the fraud spec, waiting for 100 labels after an alert instead of 1,500
    spec = (default_dir() / "fraud.yaml").read_text().replace("min_rows: 1500", "min_rows: 100")
    assert "min_rows: 100" in spec
    (tmp_path / "fraud.yaml").write_text(spec)
    watch = {**WINDOWS, "LOOPLINE_MONITOR_WINDOWS": '["count:500/100"]'}  # windows of these 750 predictions
    svc = services("registry", "monitor", "retrainer", env={"monitor": watch,
                                                             "retrainer": {"LOOPLINE_MODELS_DIR": str(tmp_path)}})
    rng = np.random.default_rng(9)
    v = await register_signed_model(isolated, svc.addr("registry"), "fraud", reference_x=transactions(3000, rng))
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    feed = Feed(publisher, namer, v.version)
    x = transactions(600, rng)
    y = (rng.random(600) < 0.3).astype(float)
    scores = np.clip(y * 0.6 + rng.normal(0.2, 0.1, 600), 0.0, 1.0)  # a good model: scores follow the labels
    # labels of the first 100 arrive before their predictions (topics are consumed apart)
    await feed.labels([f"e{i}" for i in range(100)], y[:100])
    ids = await feed.predictions(x[:300], 0, scores=scores[:300])
    await feed.labels(ids[100:], y[100:300])
    await feed.labels(ids[100:150], y[100:150])  # redelivered labels: counted once
    perf = [w for w in await _windows(isolated, labels=True) if w.window.startswith("labels:")]
    assert perf, "performance evaluated from joined labels"
    overall = [w for w in perf if not w.variant]
    assert overall[-1].metrics["labelled"] == 300 and overall[-1].metrics["auc_roc"] > 0.9
    assert any(w.variant == "torch" for w in perf), "and per variant"
    assert 0 < overall[-1].metrics["label_coverage"] <= 1
    assert [a for a in await _alerts(isolated, labels=True) if a.kind == "performance"] == []

    # concept drift: the same inputs, but the world's labels turned against the model's scores
    ids = await feed.predictions(x[300:], 300, scores=scores[300:])
    await feed.labels(ids, 1.0 - y[300:])
    perf_alerts = [a for a in await _alerts(isolated, labels=True) if a.kind == "performance"]
    assert len(perf_alerts) == 1 and perf_alerts[0].metric == "auc_roc"
    assert perf_alerts[0].value < perf_alerts[0].threshold
    assert [a for a in await _alerts(isolated, labels=True) if a.kind == "feature_drift"] == [], \
        "the inputs did not move: only labels show this drift"
    # the retrainer's policy asks for a version trained on what arrived since the onset, once 100 more labels came
    more = transactions(150, rng)
    ids = await feed.predictions(more, 600, scores=np.clip(rng.normal(0.3, 0.2, 150), 0.0, 1.0))
    await feed.labels(ids, (rng.random(150) < 0.3).astype(float))
    retrained = {namer.group("retrainer-labels"): [namer.labels("transactions")],
                 namer.group("retrainer"): [namer.alerts()]}
    [req] = [TrainingRequested.FromString(r.value) for r in await quiet(
        isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.training_requests(), 1, wait_s=0, settled=retrained)]
    assert req.trigger == "performance" and json.loads(req.evidence)
    assert abs(req.window_start.ToNanoseconds() - perf_alerts[0].onset.ToNanoseconds()) < 1e6

    # a label for an event no prediction ever had: kept for the TTL, then dead-lettered with the reason
    await feed.labels(["never-predicted"], np.array([1.0]))
    dead: list[Record] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not dead:
        dead = [r for r in await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.dlq("transactions"), 0, wait_s=1)
                if "never-predicted" in (r.header(DLQ_REASON) or "")]
    assert dead and "no prediction" in (dead[0].header(DLQ_REASON) or "")


async def test_restart_counts_nothing_twice_and_bad_predictions_go_to_dead_letters(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    reg = services("registry")
    env = {**WINDOWS, "LOOPLINE_REGISTRY_ADDR": reg.addr("registry"), "LOOPLINE_MONITOR_WINDOWS": '["count:200/100"]'}
    mon = services("monitor", env={"monitor": env})
    rng = np.random.default_rng(3)
    v = await register_signed_model(isolated, reg.addr("registry"), "fraud", reference_x=transactions(3000, rng))
    old = await register_signed_model(isolated, reg.addr("registry"), "fraud", reference_x=transactions(500, rng),
                                      profile=False)
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    feed = Feed(publisher, namer, v.version)
    x = transactions(400, rng)
    await feed.predictions(x[:250], 0)
    assert [w.window_size for w in await _windows(isolated)] == [200]
    mon.stop()
    mon = services("monitor", env={"monitor": env})
    await feed.predictions(x[:250], 0)  # redelivered after the restart: already counted
    await feed.predictions(x[250:], 250)
    windows = await _windows(isolated)
    assert [w.window_size for w in windows] == [200, 200, 200], "evaluated at 200, 300 and 400 rows, no more"
    assert len({w.metadata.event_id for w in windows}) == 3

    topic = namer.predictions("fraud")
    good = PredictionLogged(metadata=metadata("test", "bad-0"), model_name="fraud", model_version=v.version,
                            feature_names=FEATURES, inputs=x[0].tolist(), outputs=[0.5], latency_ms=1.0)
    bad: dict[str, bytes] = {}
    nan = PredictionLogged()
    nan.CopyFrom(good)
    nan.metadata.event_id, nan.inputs[0] = "bad-nan", math.nan
    bad["non-finite"] = nan.SerializeToString()
    short = PredictionLogged()
    short.CopyFrom(good)
    short.metadata.event_id = "bad-missing"
    del short.feature_names[-1]
    del short.inputs[-1]
    bad["missing feature"] = short.SerializeToString()
    unknown = PredictionLogged()
    unknown.CopyFrom(good)
    unknown.metadata.event_id, unknown.model_version = "bad-version", 999
    bad["not found"] = unknown.SerializeToString()
    bad["decode"] = b"\xff\x00 not a protobuf"
    for value in bad.values():
        await publisher.publish(topic, value, key="bad")
    no_profile = PredictionLogged()
    no_profile.CopyFrom(good)
    no_profile.metadata.event_id, no_profile.model_version = "old-0", old.version
    await publisher.publish(topic, no_profile.SerializeToString(), key="old")
    await feed.predictions(transactions(100, rng), 400)  # the monitor goes on after them
    dead = await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.dead_letter_for(topic), 4, wait_s=0,
                       settled={namer.group("monitor"): [topic]})
    reasons = " | ".join((r.header(DLQ_REASON) or "") for r in dead)
    assert len(dead) == 4, reasons
    assert "non-finite" in reasons and "missing feature risky_category" in reasons and "999" in reasons
    assert len(await _windows(isolated)) == 4, "the stream behind the bad records was evaluated"
    not_ready = [a for a in await _alerts(isolated) if a.model_version == old.version]
    assert [(a.kind, a.metric) for a in not_ready] == [("data_quality", "no_reference_profile")]
