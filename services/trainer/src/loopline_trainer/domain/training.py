"""Reproducible training and evaluation of the fraud MLP. Pure (numpy + torch, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from loopline_ml.artifact import ModelConfig, ScoringModel, build_network
from loopline_ml.drift import auc


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def time_split(x: np.ndarray, y: np.ndarray, holdout: float = 0.25) -> Split:
    """Rows are ordered by event time: the most recent ``holdout`` share is the test set, as in
    production, where a model is always judged on data newer than what it learned from."""
    cut = int(len(y) * (1 - holdout))
    return Split(x[:cut], y[:cut], x[cut:], y[cut:])


def train(x: np.ndarray, y: np.ndarray, feature_names: list[str], seed: int, *, hidden: tuple[int, ...] = (16, 8),
          epochs: int = 150, lr: float = 0.01) -> tuple[ScoringModel, list[float]]:
    """Full-batch Adam on weighted BCE. Same inputs and seed give the same weights."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    net = build_network(x.shape[1], list(hidden))
    xt = (torch.from_numpy(x.astype(np.float32)) - torch.from_numpy(mean.astype(np.float32))) / torch.from_numpy(
        std.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    pos = float(y.sum())
    pos_weight = torch.tensor([(len(y) - pos) / pos if pos else 1.0])
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    config = ModelConfig(feature_names, list(hidden), mean.astype(float).tolist(), std.astype(float).tolist())
    return ScoringModel(config, net), losses


def evaluate(model: ScoringModel, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = model.predict(x).ravel()
    pred = p >= 0.5
    truth = y.astype(bool)
    tp = float((pred & truth).sum())
    return {
        "auc": auc(truth, p),
        "accuracy": float((pred == truth).mean()) if len(y) else 0.0,
        "precision": tp / max(float(pred.sum()), 1.0),
        "recall": tp / max(float(truth.sum()), 1.0),
        "test_rows": float(len(y)),
    }
