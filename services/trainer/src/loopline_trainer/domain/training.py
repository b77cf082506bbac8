"""Reproducible training of the fraud MLP: parameters, time split, fit with a loss trajectory. Pure.

Same snapshot + same parameters + same seed = bit-identical weights (deterministic algorithms,
full-batch Adam, no data loader shuffling), which is what lets a recorded run be re-fitted later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
from loopline_core.errors import invalid
from loopline_ml.artifact import ModelConfig, ScoringModel, build_network
from loopline_ml.spec import Training

from loopline_trainer.domain.snapshot import Snapshot

OVERRIDABLE = ("window_rows", "epochs", "lr", "hidden")
"""Request params that may override the spec. Anything else a request sends is ignored (and not recorded
as effective), so a request can never rewrite provenance such as the seed or the dataset."""


@dataclass(frozen=True)
class Params:
    seed: int
    hidden: tuple[int, ...]
    epochs: int
    lr: float
    holdout: float
    validation: float
    window_rows: int = 0
    window_start: float = 0.0
    """Epoch seconds: only rows with an event time at or after it (0: no lower bound)."""
    warm_start_version: int = 0
    """The version whose weights the network starts from (0: the seed's initialisation)."""

    def as_strings(self) -> dict[str, str]:
        """Every effective parameter, as the Run records it (the window start and warm start only when set,
        so runs without them record what they always did)."""
        out = {"seed": str(self.seed), "hidden": ",".join(map(str, self.hidden)), "epochs": str(self.epochs),
               "lr": repr(self.lr), "holdout": repr(self.holdout), "validation": repr(self.validation),
               "window_rows": str(self.window_rows)}
        if self.window_start:
            out["window_start"] = repr(self.window_start)
            out["window_start_utc"] = datetime.fromtimestamp(self.window_start, UTC).isoformat()
        if self.warm_start_version:
            out["warm_start_version"] = str(self.warm_start_version)
        return out

    @classmethod
    def from_strings(cls, p: Mapping[str, str]) -> Params:
        try:
            return cls(int(p["seed"]), tuple(int(h) for h in p["hidden"].split(",")), int(p["epochs"]),
                       float(p["lr"]), float(p["holdout"]), float(p["validation"]), int(p.get("window_rows", "0")),
                       float(p.get("window_start", "0")), int(p.get("warm_start_version", "0")))
        except (KeyError, ValueError) as exc:
            raise invalid(f"recorded params are incomplete or malformed: {exc}") from exc


def effective_params(spec: Training, requested: Mapping[str, str], seed: int | None, *, window_start: float = 0.0,
                     warm_start_version: int = 0) -> Params:
    """The spec's defaults, overridden by the allow-listed request params; ``seed`` None: the spec's.
    ``window_start`` and ``warm_start_version`` come from the request's own fields, never from its params."""
    try:
        hidden = tuple(int(h) for h in requested["hidden"].split(",")) if "hidden" in requested \
            else tuple(spec.hidden)
        params = Params(seed=spec.seed if seed is None else seed, hidden=hidden,
                        epochs=int(requested.get("epochs", spec.epochs)), lr=float(requested.get("lr", spec.lr)),
                        holdout=spec.holdout, validation=spec.validation,
                        window_rows=int(requested.get("window_rows", "0") or 0), window_start=window_start,
                        warm_start_version=warm_start_version)
    except ValueError as exc:
        raise invalid(f"bad training params {dict(requested)}: {exc}") from exc
    if params.epochs <= 0 or params.lr <= 0 or not params.hidden or min(params.hidden) <= 0 or params.window_rows < 0 \
            or params.window_start < 0 or params.warm_start_version < 0:
        raise invalid(f"training params out of range: {params.as_strings()}")
    return params


def window(snap: Snapshot, params: Params) -> Snapshot:
    """The rows a run trains on: the newest ``window_rows`` of the snapshot. The window start is applied
    by the feature service when it builds the snapshot (system time: the events that arrived from the
    start on), so the snapshot a run records already holds only those rows and a refit needs nothing more."""
    return snap.tail(params.window_rows)


@dataclass(frozen=True)
class Split:
    """Row ranges of a snapshot in event-time order: train, then validation, then test (the newest)."""

    train: slice
    validation: slice
    test: slice


def time_split(n: int, holdout: float, validation: float) -> Split:
    """The newest ``holdout`` share is the test set, as in production, where a model is always judged on
    data newer than what it learned from; the ``validation`` share just before it tracks overfitting."""
    test_start = int(n * (1 - holdout))
    val_start = int(n * (1 - holdout - validation))
    return Split(slice(0, val_start), slice(val_start, test_start), slice(test_start, n))


def check_trainable(snap: Snapshot, split: Split, min_rows: int, min_positives: int, since: float = 0.0) -> None:
    y = snap.y
    positives = int(y.sum())
    if len(y) < min_rows or positives < min_positives:
        window = f" since the window start {datetime.fromtimestamp(since, UTC).isoformat()}" if since else ""
        raise invalid(f"training set too small{window}: {len(y)} rows, {positives} positive "
                      f"(needs {min_rows} rows, {min_positives} positive)")
    for name, part in (("training", split.train), ("test", split.test)):
        py = y[part]
        if py.sum() == 0 or py.sum() == len(py):
            raise invalid(f"the {name} part of the set has one class ({len(py)} rows, {int(py.sum())} positive)")


@dataclass(frozen=True)
class Fitted:
    model: ScoringModel
    losses: list[float]
    validation_losses: list[float]


Weights = Mapping[str, torch.Tensor]
"""A network's state dict: the starting point of a warm start."""


def fit(snap: Snapshot, split: Split, params: Params, init: Weights | None = None) -> Fitted:
    """Full-batch Adam on class-weighted BCE over the training rows; the validation loss is measured
    after each epoch (same weighting) and never feeds back into training.

    ``init`` (a warm start) replaces the seed's initial weights; inputs are still scaled by this
    window's mean and std, so the network adapts to the new scale rather than keeping the old one.
    """
    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(True)
    x, y = snap.x[split.train], snap.y[split.train]
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    net = build_network(x.shape[1], list(params.hidden))
    if init is not None:
        try:
            net.load_state_dict(dict(init))
        except RuntimeError as exc:  # other layer shapes: the champion's architecture is not this run's
            raise invalid(f"cannot warm start from v{params.warm_start_version}: {exc}") from exc
    m, s = torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))
    xt = (torch.from_numpy(x.astype(np.float32)) - m) / s
    yt = torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    xv = (torch.from_numpy(snap.x[split.validation].astype(np.float32)) - m) / s
    yv = torch.from_numpy(snap.y[split.validation].astype(np.float32)).reshape(-1, 1)
    pos = float(y.sum())
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([(len(y) - pos) / pos if pos else 1.0]))
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)
    losses, val_losses = [], []
    for _ in range(params.epochs):
        opt.zero_grad()
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(yv):
            with torch.no_grad():
                val_losses.append(loss_fn(net(xv), yv).item())
    config = ModelConfig(snap.feature_names, list(params.hidden), mean.astype(float).tolist(),
                         std.astype(float).tolist())
    return Fitted(ScoringModel(config, net), losses, val_losses)
