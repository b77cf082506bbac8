"""Checking Open Inference Protocol tensors against a model's signature. Pure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from loopline_core.errors import invalid

INPUT_NAME = "features"
OUTPUT_NAME = "score"


@dataclass(frozen=True)
class TensorIn:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None
    fp32: list[float]


def to_batch(tensors: list[TensorIn], n_features: int) -> np.ndarray:
    """The (batch, n_features) float32 array of a request, or INVALID_ARGUMENT saying what is wrong."""
    if len(tensors) != 1:
        raise invalid(f"expected exactly one input tensor {INPUT_NAME!r}, got {len(tensors)}")
    t = tensors[0]
    if t.name != INPUT_NAME:
        raise invalid(f"unknown input {t.name!r}; the model takes {INPUT_NAME!r}")
    if t.datatype != "FP32":
        raise invalid(f"input {INPUT_NAME!r} must be FP32, got {t.datatype}")
    if len(t.shape) != 2 or t.shape[1] != n_features or t.shape[0] < 1:
        raise invalid(f"input {INPUT_NAME!r} must have shape [batch, {n_features}], got {list(t.shape)}")
    count = t.shape[0] * t.shape[1]
    if t.raw is not None:
        if len(t.raw) != count * 4:
            raise invalid(f"raw input holds {len(t.raw)} bytes; shape {list(t.shape)} FP32 needs {count * 4}")
        arr = np.frombuffer(t.raw, dtype="<f4")
    else:
        if len(t.fp32) != count:
            raise invalid(f"input holds {len(t.fp32)} values; shape {list(t.shape)} needs {count}")
        arr = np.asarray(t.fp32, dtype=np.float32)
    out = arr.reshape(t.shape)
    if not np.isfinite(out).all():
        raise invalid("inputs must be finite numbers")
    return out
