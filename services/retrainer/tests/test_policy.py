"""The retraining policy's pure decisions (the model spec's ``retraining:`` section), with fake state."""

from __future__ import annotations

from loopline.monitor.v1.events_pb2 import AlertRaised, DriftAlertRaised
from loopline_core.events import metadata, timestamp
from loopline_ml.spec import Retraining, TrainingWindow, Trigger
from loopline_retrainer.domain.policy import Alert, Busy, Outcome, plan_alert, plan_label_volume, plan_schedule
from loopline_retrainer.handlers.retraining import alert_of

POLICY = Retraining(triggers=[Trigger(kind="feature_drift"), Trigger(kind="performance", min_severity="critical"),
                              Trigger(kind="label_volume", labels=100), Trigger(kind="schedule", every_s=3600)],
                    cooldown_s=60, in_flight_timeout_s=900, mode="warm_start",
                    window=TrainingWindow(from_onset=True, min_rows=50, max_rows=500))
IDLE = Busy()


def _alert(kind: str = "feature_drift", severity: str = "warning", **kw: object) -> Alert:
    fields: dict[str, object] = {"event_id": "a-1", "model": "fraud", "version": 3, "kind": kind,
                                 "severity": severity, "episode_id": "ep-1", "onset": 1_700_000_000.0,
                                 "summary": "6 of 8 columns drifted", **kw}
    return Alert(**fields)  # type: ignore[arg-type]


def test_a_drift_alert_waits_for_labels_then_trains_from_its_onset_with_a_warm_start() -> None:
    p = plan_alert(POLICY, _alert(), IDLE, episode_requested=False)
    assert (p.outcome, p.trigger, p.mode) == (Outcome.WAITING, "feature_drift", "warm_start")
    assert (p.window_start, p.min_rows, p.max_rows) == (1_700_000_000.0, 50, 500)
    assert "feature_drift (warning) on v3: 6 of 8 columns drifted" in p.reason and "50 labels" in p.reason
    at_once = Retraining(triggers=[Trigger(kind="feature_drift")], window=TrainingWindow(min_rows=0))
    assert plan_alert(at_once, _alert(), IDLE, episode_requested=False).outcome is Outcome.REQUESTED
    no_onset = Retraining(triggers=[Trigger(kind="feature_drift")], window=TrainingWindow(from_onset=False))
    assert plan_alert(no_onset, _alert(), IDLE, episode_requested=False).window_start == 0.0


def test_skips_say_why() -> None:
    def code(policy: Retraining | None, alert: Alert, busy: Busy = IDLE, episode: bool = False) -> tuple[str, str]:
        p = plan_alert(policy, alert, busy, episode_requested=episode)
        assert p.outcome is Outcome.SKIPPED
        return p.code, p.reason

    assert code(None, _alert())[0] == "no_spec"
    assert code(POLICY, _alert(repeat=2), episode=True) == (
        "repeat", "repeat 2 of alert episode ep-1, which already led to a request")
    assert code(POLICY, _alert("latency")) == ("not_configured", "trigger kind latency is not configured")
    assert code(POLICY, _alert("performance", "warning")) == ("below_severity", "severity warning is below critical")
    assert plan_alert(POLICY, _alert("performance", "critical"), IDLE, episode_requested=False).outcome \
        is Outcome.WAITING
    assert code(POLICY, _alert(), Busy(in_flight_age_s=10))[0] == "in_flight"
    assert code(POLICY, _alert(), Busy(since_last_done_s=10))[0] == "cooldown"
    # a request stuck past the in-flight timeout no longer blocks; a cool-down that passed neither
    assert plan_alert(POLICY, _alert(), Busy(in_flight_age_s=1000, since_last_done_s=61),
                      episode_requested=False).outcome is Outcome.WAITING
    # a repeat of an episode that never led to a request (it came during a cool-down) is judged afresh
    assert plan_alert(POLICY, _alert(repeat=3), IDLE, episode_requested=False).outcome is Outcome.WAITING


def test_label_volume_and_schedule() -> None:
    assert plan_label_volume(POLICY, 99, IDLE) is None
    volume = plan_label_volume(POLICY, 100, IDLE)
    assert volume is not None and volume.outcome is Outcome.REQUESTED and volume.trigger == "label_volume"
    assert volume.window_start == 0.0 and volume.max_rows == 500
    busy = plan_label_volume(POLICY, 150, Busy(in_flight_age_s=5))
    assert busy is not None and (busy.outcome, busy.code) == (Outcome.SKIPPED, "in_flight")
    assert plan_label_volume(Retraining(), 10_000, IDLE) is None, "not configured: nothing to decide"
    assert plan_schedule(POLICY, 3599, IDLE) is None
    due = plan_schedule(POLICY, 3600, IDLE)
    assert due is not None and due.outcome is Outcome.REQUESTED and due.trigger == "schedule"
    cooling = plan_schedule(POLICY, 7200, Busy(since_last_done_s=1))
    assert cooling is not None and cooling.code == "cooldown"
    assert plan_schedule(None, 1e9, IDLE) is None


def test_alerts_new_and_legacy_read_alike() -> None:
    raised = AlertRaised(metadata=metadata("monitor", "a-9"), model_name="fraud", model_version=2, kind="performance",
                         severity="critical", onset=timestamp(1_700_000_000.5), episode_id="ep-7", repeat=3,
                         metric="auc_roc", value=0.66, threshold=0.7, report_uri="s3://r/a.html")
    a = alert_of(raised)
    assert (a.kind, a.severity, a.episode_id, a.repeat, a.onset) == ("performance", "critical", "ep-7", 3,
                                                                       1_700_000_000.5)
    assert a.evidence()["report_uri"] == "s3://r/a.html" and a.evidence()["alert_id"] == "a-9"
    first = alert_of(AlertRaised(metadata=metadata("monitor", "a-10"), model_name="fraud", kind="feature_drift",
                                 severity="warning"))
    assert (first.episode_id, first.repeat, first.onset) == ("a-10", 1, 0.0), "its own episode; onset unknown"
    legacy = alert_of(DriftAlertRaised(metadata=metadata("monitor", "d-1"), model_name="fraud", model_version=1,
                                       statistic="psi", threshold=0.25, feature_scores={"amount": 0.9, "b": 0.1}))
    assert (legacy.kind, legacy.severity, legacy.episode_id) == ("feature_drift", "warning", "d-1")
    assert legacy.summary == "psi amount=0.90 > 0.25"
