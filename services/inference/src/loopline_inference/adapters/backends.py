"""Backends: what computes a version's scores. Every backend answers off the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Protocol

import numpy as np
from loopline_ml.artifact import ScoringModel


class Backend(Protocol):
    """One variant of one version: ``predict`` takes a (n, n_features) float32 batch and returns (n,)
    float32 scores without blocking the event loop; ``close`` frees what it holds."""

    variant: str
    n_features: int

    async def predict(self, x: np.ndarray) -> np.ndarray: ...

    async def close(self) -> None: ...


class TorchBackend:
    """The signed torch artifact, in process; batches run on ``executor`` (torch releases the GIL)."""

    variant = "torch"

    def __init__(self, model: ScoringModel, executor: Executor) -> None:
        self.model = model
        self.n_features = model.n_features
        self._executor = executor

    async def predict(self, x: np.ndarray) -> np.ndarray:
        scores = await asyncio.get_running_loop().run_in_executor(self._executor, self.model.predict, x)
        return np.asarray(scores, dtype="<f4").reshape(-1)

    async def close(self) -> None:
        return None
