"""Pure parts of the trainer: spec, evaluation, gate, exports, parameters, reproducible fit, card. No stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import ErrorKind, LooplineError
from loopline_ml import spec as specs
from loopline_ml.card import build_card, render_markdown
from loopline_ml.evaluation import SliceResult, band_label, calibration_error, evaluate, metrics, slice_masks
from loopline_ml.exports import onnx_scores
from loopline_ml.gate import evaluate_gate
from loopline_trainer.domain.exporting import build_exports
from loopline_trainer.domain.lineage import train_to_dir
from loopline_trainer.domain.snapshot import Snapshot
from loopline_trainer.domain.training import Params, check_trainable, effective_params, time_split, window

FRAUD = specs.load(specs.default_dir(), "fraud")


def _snapshot(n: int = 600, seed: int = 0) -> Snapshot:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0]) * 100  # an "amount"
    y = ((x[:, 1] + 0.3 * rng.normal(size=n)) > 1.2).astype(np.float32)
    countries = np.array(["DE", "FR", "NL"])[rng.integers(0, 3, n)]
    return Snapshot(["amount", "b", "c"], x, y, np.arange(n, dtype=np.float64) * 60, {"country": countries})


# ---- spec ---------------------------------------------------------------------------------------

def test_the_fraud_spec_declares_purpose_training_gate_and_exports() -> None:
    assert FRAUD.owner and FRAUD.intended_use and not FRAUD.requires_approval
    assert FRAUD.training.seed == 7 and FRAUD.training.hidden == [16, 8]
    assert {c.metric: c.direction for c in FRAUD.gate.absolute}["calibration_error"] == "lower"
    assert FRAUD.exports.onnx is not None and FRAUD.exports.onnx.opset == 17 and FRAUD.exports.onnx.int8
    assert FRAUD.gate.digest() == specs.load(specs.default_dir(), "fraud").gate.digest()


def test_a_missing_or_invalid_spec_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(LooplineError) as missing:
        specs.load(tmp_path, "fraud")
    assert missing.value.kind is ErrorKind.INVALID_ARGUMENT and "no spec" in missing.value.message
    (tmp_path / "fraud.yaml").write_text("name: fraud\ndescription: d\nintended_use: u\nowner: o\n"
                                         "training: {feature_view: t, holdout: 0.5, validation: 0.45}\n")
    with pytest.raises(LooplineError) as bad:
        specs.load(tmp_path, "fraud")
    assert bad.value.kind.permanent and "holdout + validation" in bad.value.message


# ---- evaluation ---------------------------------------------------------------------------------

def test_metrics_match_their_definitions() -> None:
    y = np.array([0, 0, 0, 0, 1, 1], dtype=float)
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.7, 0.9])
    m = metrics(y, p, fpr=0.25)
    assert m["auc_roc"] == pytest.approx(7 / 8)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["recall_at_fpr"] == pytest.approx(1.0)  # at FPR 1/4 (the 0.8 negative) both positives are above
    # bins: 0.1|0.2|0.3 alone (gaps .1,.2,.3), 0.7 (gap .3), 0.8 (gap .8), 0.9 (gap .1)
    assert calibration_error(y, p) == pytest.approx((0.1 + 0.2 + 0.3 + 0.3 + 0.8 + 0.1) / 6)


def test_a_one_class_slice_leaves_undefined_metrics_out() -> None:
    m = metrics(np.zeros(5), np.full(5, 0.2), fpr=0.01)
    assert "auc_roc" not in m and "auc_pr" not in m and "recall" not in m and "precision" not in m
    assert m["calibration_error"] == pytest.approx(0.2) and "log_loss" in m


def test_slices_by_string_column_and_by_amount_band() -> None:
    assert [band_label(v, [0, 50, 200]) for v in (-1, 0, 49.9, 50, 199, 200, 5000)] == \
        ["<0", "0-50", "0-50", "50-200", "50-200", "200+", "200+"]
    masks = slice_masks({"country": np.array(["DE", "FR", "DE"]), "amount": np.array([10.0, 60.0, 300.0])},
                        FRAUD.evaluation)
    assert list(masks) == ["country=DE", "country=FR", "amount_band=0-50", "amount_band=50-200",
                           "amount_band=200-1000"]
    assert masks["country=DE"].tolist() == [True, False, True]
    results = evaluate(np.array([0, 1, 1.0]), np.array([0.1, 0.9, 0.4]), masks, 0.01,
                       champion=np.array([0.5, 0.5, 0.5]))
    assert results[0].slice == "" and results[0].rows == 3 and results[1].positives == 1
    assert results[0].champion_metrics["auc_roc"] == 0.5


# ---- gate ---------------------------------------------------------------------------------------

def _result(name: str, auc: float, champ: float | None, rows: int = 100, positives: int = 10,
            **extra: float) -> SliceResult:
    return SliceResult(name, rows, positives, {"auc_roc": auc, "auc_pr": auc, "recall_at_fpr": 0.9,
                                               "calibration_error": 0.05, **extra},
                       {} if champ is None else {"auc_roc": champ, "auc_pr": champ})


def test_without_a_champion_change_checks_are_skipped_and_absolute_ones_decide() -> None:
    gate = evaluate_gate(FRAUD.gate, [_result("", 0.95, None)], min_slice_rows=30)
    assert gate.passed and gate.champion_version == 0 and gate.config_digest == FRAUD.gate.digest()
    skipped = [c for c in gate.checks if "change" in c.kind]
    assert skipped and all(c.passed and c.detail.startswith("skipped") for c in skipped)
    low = evaluate_gate(FRAUD.gate, [_result("", 0.7, None)], min_slice_rows=30)
    assert not low.passed and "auc_roc" in low.summary
    uncalibrated = evaluate_gate(FRAUD.gate, [_result("", 0.95, None, calibration_error=0.3)], min_slice_rows=30)
    assert not uncalibrated.passed and "lower is better" in uncalibrated.summary  # 0.3 is worse, not better


def test_a_slice_worse_than_the_champion_fails_the_gate_but_small_slices_are_not_gated() -> None:
    results = [_result("", 0.95, 0.95), _result("country=DE", 0.90, 0.93), _result("country=NL", 0.5, 0.99, rows=5)]
    gate = evaluate_gate(FRAUD.gate, results, min_slice_rows=30, champion_version=3)
    failed = [c for c in gate.checks if not c.passed]
    assert [(c.kind, c.slice, round(c.value, 2), round(c.baseline, 2)) for c in failed] == \
        [("slice_change", "country=DE", 0.9, 0.93)]
    assert not any(c.slice == "country=NL" for c in gate.checks) and gate.champion_version == 3
    ok = evaluate_gate(FRAUD.gate, [results[0], _result("country=DE", 0.92, 0.93)], min_slice_rows=30,
                       champion_version=3)
    assert ok.passed and "against champion v3" in ok.summary  # -0.01 is within the allowed -0.02


def test_a_champion_that_cannot_be_evaluated_fails_the_change_checks_closed() -> None:
    gate = evaluate_gate(FRAUD.gate, [_result("", 0.99, None)], min_slice_rows=30, champion_version=4,
                         champion_error="signature refused: unknown_key")
    change = [c for c in gate.checks if "change" in c.kind]
    assert not gate.passed and change and not any(c.passed for c in change)
    assert "unknown_key" in change[0].detail and "failed closed" in gate.summary


# ---- training -----------------------------------------------------------------------------------

def test_requests_override_only_allow_listed_params_and_seed_zero_is_a_seed() -> None:
    p = effective_params(FRAUD.training, {"epochs": "20", "seed": "99", "dataset_digest": "x"}, 0)
    assert p.seed == 0 and p.epochs == 20 and p.hidden == (16, 8)
    assert effective_params(FRAUD.training, {}, None).seed == 7
    assert Params.from_strings(p.as_strings()) == p
    with pytest.raises(LooplineError):
        effective_params(FRAUD.training, {"epochs": "-1"}, None)


def test_the_same_lineage_gives_bit_identical_artifacts(tmp_path: Path) -> None:
    snap = _snapshot()
    params = effective_params(FRAUD.training, {"epochs": "40"}, 3)
    a = train_to_dir(snap, params, tmp_path / "a")
    b = train_to_dir(snap, params, tmp_path / "b")
    assert a.artifact_digest == b.artifact_digest
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert len(a.fitted.losses) == len(a.fitted.validation_losses) == 40
    c = train_to_dir(snap, Params(**{**params.__dict__, "seed": 4}), tmp_path / "c")
    assert c.artifact_digest != a.artifact_digest


def test_a_window_start_is_recorded_and_window_rows_applied() -> None:
    snap = _snapshot()  # event times 0, 60, ... 35940
    p = effective_params(FRAUD.training, {"window_rows": "100", "window_start": "1"}, 1, window_start=60.0 * 400)
    assert p.window_start == 24000.0, "from the request's field, never from its params"
    rows = window(snap, p)
    assert len(rows) == 100 and rows.event_time.min() == snap.event_time[-100], "the newest window_rows"
    assert len(window(snap, Params(**{**p.__dict__, "window_rows": 0}))) == len(snap), \
        "the start is the feature service's filter (by arrival), not applied again on event times"
    recorded = p.as_strings()
    assert recorded["window_start"] == "24000.0" and recorded["window_start_utc"].startswith("1970-01-01T06:40")
    assert Params.from_strings(recorded) == p
    assert "window_start" not in effective_params(FRAUD.training, {}, 1).as_strings(), "unset: not recorded"
    late = snap.since(60.0 * 590)
    with pytest.raises(LooplineError) as err:
        check_trainable(late, time_split(len(late), 0.25, 0.1), 200, 5, since=60.0 * 590)
    assert err.value.kind.permanent and "since the window start 1970-01-01T09:50" in err.value.message


def test_a_warm_start_begins_from_the_given_weights(tmp_path: Path) -> None:
    snap = _snapshot()
    champion = train_to_dir(snap, effective_params(FRAUD.training, {"epochs": "60"}, 1), tmp_path / "champion")
    weights = champion.fitted.model.network.state_dict()
    p = effective_params(FRAUD.training, {"epochs": "3"}, 2, warm_start_version=1)
    assert p.as_strings()["warm_start_version"] == "1" and Params.from_strings(p.as_strings()) == p
    warm = train_to_dir(snap, p, tmp_path / "warm", weights)
    again = train_to_dir(snap, p, tmp_path / "again", weights)
    cold = train_to_dir(snap, p, tmp_path / "cold")
    assert warm.artifact_digest == again.artifact_digest, "a warm start is as reproducible as a seeded one"
    assert warm.artifact_digest != cold.artifact_digest
    # three epochs from the champion stay near it; three from the seed are far from both
    first = next(iter(weights))
    near = float((warm.fitted.model.network.state_dict()[first] - weights[first]).abs().max())
    far = float((cold.fitted.model.network.state_dict()[first] - weights[first]).abs().max())
    assert near < 0.1 < far
    with pytest.raises(LooplineError) as err:
        train_to_dir(snap, Params(**{**p.__dict__, "hidden": (4,)}), tmp_path / "other", weights)
    assert err.value.kind.permanent and "cannot warm start from v1" in err.value.message


def test_split_is_by_time_and_one_class_sets_are_refused() -> None:
    s = time_split(100, 0.25, 0.1)
    assert (s.train, s.validation, s.test) == (slice(0, 65), slice(65, 75), slice(75, 100))
    snap = _snapshot()
    one_class = Snapshot(snap.feature_names, snap.x, np.zeros_like(snap.y), snap.event_time, snap.strings)
    with pytest.raises(LooplineError) as err:
        check_trainable(one_class, time_split(len(snap), 0.25, 0.1), 200, 5)
    assert err.value.kind.permanent


# ---- exports and card ---------------------------------------------------------------------------

def test_onnx_exports_score_like_torch_and_int8_stays_close(tmp_path: Path) -> None:
    snap = _snapshot()
    trained = train_to_dir(snap, effective_params(FRAUD.training, {"epochs": "60"}, 1), tmp_path / "torch")
    test = trained.split.test
    x, y = snap.x[test], snap.y[test]
    fp32, int8 = build_exports(trained.fitted.model, "fraud", specs.Onnx(), tmp_path / "exports", x, y, 0.01)
    assert (fp32.format, int8.format) == ("onnx", "onnx-int8")
    onnx_path = fp32.directory / "fraud_onnx" / "1" / "model.onnx"
    np.testing.assert_allclose(onnx_scores(onnx_path, x), trained.fitted.model.predict(x), atol=1e-5)
    assert fp32.metrics["max_abs_diff_vs_torch"] < 1e-5
    assert abs(int8.metrics["auc_roc"] - fp32.metrics["auc_roc"]) < 0.02
    config = (int8.directory / "fraud_onnx_int8" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and 'name: "features"' in config and "dims: [ -1, 3 ]" in config


def test_the_card_renders_slices_gate_and_lineage() -> None:
    gate = evaluate_gate(FRAUD.gate, [_result("", 0.95, None)], min_slice_rows=30)
    v = pb.ModelVersion(model_name="fraud", version=2, run_id="r1", gate=gate, metrics={"auc_roc": 0.95},
                        slices=[pb.SliceMetrics(slice="", rows=100, positives=10, metrics={"auc_roc": 0.95}),
                                pb.SliceMetrics(slice="country=NL", rows=4, positives=0, metrics={})],
                        run=pb.Run(git_commit="abc", git_dirty=True, seed=7, trajectory=[pb.Epoch(epoch=1, loss=0.5)]))
    card = build_card(v, pb.Model(name="fraud", intended_use="ranking"), FRAUD.limitations, min_slice_rows=30)
    assert card["version"] == 2 and card["metrics"]["overall"] == {"auc_roc": 0.95}
    md = render_markdown(card)
    assert "# Model card: fraud v2" in md and "| country=NL | 4 | 0 |" in md and "Gate: passed" in md
    assert "reported but not gated: country=NL" in md and "uncommitted changes" in md
