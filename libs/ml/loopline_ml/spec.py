"""A model's declared configuration (``models/<name>.yaml``): purpose, training, evaluation, gate, exports.

The spec is intent, written by people; what a run actually used is recorded in its ``Run`` (every
effective parameter), so a later edit of the file never changes what an old version claims.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from loopline_core.errors import invalid
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Training(_Strict):
    feature_view: str
    seed: int = 7
    hidden: list[int] = Field(default=[16, 8], min_length=1)
    epochs: int = Field(default=150, gt=0)
    lr: float = Field(default=0.01, gt=0)
    holdout: float = Field(default=0.25, gt=0, lt=1)
    validation: float = Field(default=0.1, ge=0, lt=1)
    min_rows: int = Field(default=200, gt=0)
    min_positives: int = Field(default=5, gt=0)

    @model_validator(mode="after")
    def _leaves_rows_to_train(self) -> Training:
        if self.holdout + self.validation >= 0.9:
            raise ValueError("holdout + validation must leave at least 10% of rows to train on")
        return self


class Band(_Strict):
    """Slices of a numeric feature by edges: [0, 50, 200] gives "0-50", "50-200" and "200+"."""

    name: str
    feature: str
    edges: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> Band:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"band {self.name}: edges must increase")
        return self


class Evaluation(_Strict):
    fpr: float = Field(default=0.01, gt=0, lt=1)
    slices: list[str] = []
    """String columns of the training set; one slice per value ("country=DE")."""
    bands: list[Band] = []
    min_slice_rows: int = 30


Direction = Literal["higher", "lower"]
"""Whether a larger value of the metric is better (auc_roc) or worse (calibration_error, log_loss)."""


class AbsoluteCheck(_Strict):
    metric: str
    direction: Direction
    threshold: float


class ChangeCheck(_Strict):
    metric: str
    direction: Direction
    max_worsening: float = Field(ge=0)
    per_slice: bool = False
    """Check every slice with enough rows and both classes instead of the whole test set."""


class GateSpec(_Strict):
    absolute: list[AbsoluteCheck] = []
    change: list[ChangeCheck] = []

    def digest(self) -> str:
        """sha256 of the gate section's canonical JSON: which rules a stored verdict was reached under."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


class Onnx(_Strict):
    opset: int = 17
    int8: bool = True


class Exports(_Strict):
    onnx: Onnx | None = Onnx()


class Rollout(_Strict):
    """How a gated challenger meets traffic before it may replace the champion (the registry's RolloutPolicy)."""

    mode: Literal["direct", "canary", "shadow"] = "direct"
    canary_share: float = Field(default=0.1, ge=0, le=1)
    sticky_by: Literal["entity", "request"] = "entity"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_samples: int = Field(default=200, ge=0)
    latency_budget_ms: float = Field(default=100.0, gt=0)
    min_duration_s: float = Field(default=60.0, ge=0)
    max_duration_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Rollout:
        if self.mode == "canary" and self.canary_share <= 0:
            raise ValueError("a canary rollout needs canary_share > 0")
        if 0 < self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be 0 (no limit) or at least min_duration_s")
        return self


Variant = Literal["torch", "onnx", "onnx-int8", "triton"]


class Variants(_Strict):
    """Which exported variant answers a request (the registry's VariantPolicy)."""

    default_variant: Variant = "torch"
    fast_variant: Variant | None = None
    """For requests whose latency budget is under ``fast_budget_ms``."""
    fast_budget_ms: float = Field(default=0.0, ge=0)


AlertKind = Literal["feature_drift", "prediction_drift", "performance", "data_quality", "latency", "error_rate",
                   "consumer_lag"]
Severity = Literal["warning", "critical"]


class PerformanceCheck(_Strict):
    """A performance alert from delayed labels: ``metric`` over the last ``window_labels`` labelled rows."""

    metric: Literal["auc_roc", "auc_pr", "precision", "recall", "calibration_error"] = "auc_roc"
    direction: Literal["higher", "lower"] = "higher"
    warning: float = 0.8
    critical: float = 0.7


class Monitoring(_Strict):
    """What the monitor watches for this model (the trainer stores the column types in the reference profile)."""

    categorical: list[str] = []
    """Features tested as categories (chi-squared / Jensen-Shannon / z); the rest are numeric."""
    drift_share: float = Field(default=0.5, gt=0, le=1)
    """Dataset drift when at least this share of the columns drifted (Evidently's rule and default)."""
    critical_share: float = Field(default=0.75, gt=0, le=1)
    """Feature drift is critical (not a warning) from this share of drifted columns."""
    window_labels: int = Field(default=500, gt=0)
    performance: list[PerformanceCheck] = [PerformanceCheck()]
    threshold: float = Field(default=0.5, ge=0, le=1)
    """The deployed decision threshold: precision and recall are computed at it."""
    ranges: dict[str, tuple[float, float]] = {}
    """Valid ``[low, high]`` per feature; a value outside counts toward the out-of-range rate."""


class Trigger(_Strict):
    """One reason to retrain."""

    kind: Literal["feature_drift", "prediction_drift", "performance", "label_volume", "schedule"]
    min_severity: Severity = "warning"
    labels: int = Field(default=0, ge=0)
    """label_volume: retrain after this many new labels."""
    every_s: float = Field(default=0.0, ge=0)
    """schedule: retrain this often."""


class TrainingWindow(_Strict):
    from_onset: bool = True
    """A drift-triggered retrain trains on events from the drift's onset on only."""
    min_rows: int = Field(default=1500, ge=0)
    """Wait until this many labels arrived since the trigger before training."""
    max_rows: int = Field(default=3000, ge=0)
    """Train on at most the newest this many labelled rows (0: all)."""


class Retraining(_Strict):
    """When the retrainer asks for a new version, and how."""

    triggers: list[Trigger] = [Trigger(kind="feature_drift"), Trigger(kind="performance")]
    cooldown_s: float = Field(default=60.0, ge=0)
    in_flight_timeout_s: float = Field(default=900.0, gt=0)
    mode: Literal["full", "warm_start"] = "full"
    window: TrainingWindow = TrainingWindow()


class ModelSpec(_Strict):
    name: str
    description: str
    intended_use: str
    owner: str
    requires_approval: bool = False
    limitations: list[str] = []
    training: Training
    evaluation: Evaluation = Evaluation()
    gate: GateSpec = GateSpec()
    exports: Exports = Exports()
    rollout: Rollout = Rollout()
    variants: Variants = Variants()
    monitoring: Monitoring = Monitoring()
    retraining: Retraining = Retraining()


def default_dir() -> Path:
    """``models/`` beside the project (a checkout or an image that copies it), else in the working directory."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "models").is_dir() and (parent / "pyproject.toml").is_file():
            return parent / "models"
    return Path.cwd() / "models"


def parse(text: str, source: str = "<spec>") -> ModelSpec:
    try:
        return ModelSpec.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        raise invalid(f"model spec {source} is not valid: {exc}") from exc


def load(directory: Path, name: str) -> ModelSpec:
    """The spec of ``name`` from ``<directory>/<name>.yaml``; a missing or invalid file is INVALID_ARGUMENT
    (permanent: a training request for a model nobody declared fails, it is not retried)."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise invalid(f"model {name!r} has no spec ({path} does not exist)")
    spec = parse(path.read_text(), str(path))
    if spec.name != name:
        raise invalid(f"model spec {path} names {spec.name!r}, not {name!r}")
    return spec
