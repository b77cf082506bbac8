"""Monitor as its own process: PSI against the served version's signed reference, alerts once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.monitor.v1.events_pb2 import DriftAlertRaised
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_ml.drift import psi, reference
from loopline_monitor.domain.alerting import next_state
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, quiet, register_signed_model, set_alias


def test_psi_and_hysteresis() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5000, 1))
    ref = reference(base, ["a"])
    assert psi(ref, rng.normal(size=(2000, 1)), ["a"])["a"] < 0.05
    assert psi(ref, rng.normal(loc=1.0, size=(2000, 1)), ["a"])["a"] > 0.25
    raised = next_state("ok", 0.3, 0.25, 0.1)
    assert raised.state == "alerting" and raised.raise_alert
    assert not next_state("alerting", 0.2, 0.25, 0.1).raise_alert
    assert next_state("alerting", 0.2, 0.25, 0.1).state == "alerting", "between the bounds the state holds"
    assert next_state("alerting", 0.05, 0.25, 0.1).state == "ok"
    assert next_state("alerting", 0.5, 0.25, 0.1, evaluations_in_state=5, repeat_every=5).raise_alert


async def test_drift_raises_one_alert(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                      publisher: Publisher) -> None:
    svc = services("registry", "monitor", env={"monitor": {
        "LOOPLINE_MONITOR_EVERY": "100", "LOOPLINE_MONITOR_WINDOW": "200", "LOOPLINE_MONITOR_REPEAT_EVERY": "0"}})
    rng = np.random.default_rng(5)
    v = await register_signed_model(isolated, svc.addr("registry"), "fraud", reference_x=rng.normal(
        size=(3000, len(FEATURES))))
    await set_alias(svc.addr("registry"), "fraud", "champion", v.version)
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])

    async def send(x: np.ndarray, offset: int) -> None:
        for i, row in enumerate(x):
            p = PredictionLogged(metadata=metadata("test", f"p{offset + i}"), model_name="fraud",
                                 model_version=v.version, request_id=f"p{offset + i}", feature_names=FEATURES,
                                 inputs=row.tolist(), outputs=[0.1], latency_ms=1.0)
            await publisher.publish(namer.predictions("fraud"), p.SerializeToString(), key="fraud")

    store = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                        isolated["LOOPLINE_S3_SECRET_KEY"])
    before = set(await store.list_keys("loopline-reports", "drift/fraud/"))  # the bucket is shared by tests

    async def reports() -> set[str]:
        return set(await store.list_keys("loopline-reports", "drift/fraud/")) - before

    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    # Once the monitor's group committed every prediction sent, its reports and alerts for them exist.
    handled = {namer.group("monitor"): [namer.predictions("fraud")]}

    async def alerts(expected: int = 0) -> list[DriftAlertRaised]:
        return [DriftAlertRaised.FromString(r.value) for r in
                await quiet(bootstrap, namer.alerts(), expected, wait_s=0, settled=handled)]

    await send(rng.normal(size=(200, len(FEATURES))), 0)
    await send(rng.normal(size=(50, len(FEATURES))), 0)  # redelivered predictions: ignored
    assert await alerts() == [], "no drift, no alert"
    assert len(await reports()) == 2, "one report per 100 new predictions"
    shifted = rng.normal(size=(300, len(FEATURES)))
    shifted[:, 0] += 2.0
    await send(shifted, 1000)
    raised = await alerts(1)
    assert len(raised) == 1, "hysteresis: a sustained drift raises one alert"
    a = raised[0]
    assert a.model_version == v.version and a.statistic == "psi"
    assert max(a.feature_scores, key=a.feature_scores.get) == "amount"
    assert a.feature_scores["amount"] > a.threshold > a.feature_scores["night"]
    # one report per 100 new predictions: 200 new (50 more were repeats), then 300
    assert len(await reports()) == 5
