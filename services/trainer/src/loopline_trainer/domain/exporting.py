"""Building the ONNX exports of a fitted model and measuring them on the test rows. Pure (local files).

Each export is judged on its own: its scores come from onnxruntime, not from torch, and its metrics
say what a server running it would get (and how far from the torch scores it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loopline_ml.artifact import ScoringModel
from loopline_ml.evaluation import metrics
from loopline_ml.exports import export_onnx, onnx_scores, quantize_int8
from loopline_ml.spec import Onnx


@dataclass(frozen=True)
class BuiltExport:
    format: str
    """"onnx" or "onnx-int8"."""
    directory: Path
    """The Triton repository to sign and upload (``<triton_name>/config.pbtxt``, ``<triton_name>/1/model.onnx``)."""
    triton_name: str
    opset: int
    metrics: dict[str, float]


def build_exports(model: ScoringModel, model_name: str, spec: Onnx, work: Path, x_test: np.ndarray,
                  y_test: np.ndarray, fpr: float) -> list[BuiltExport]:
    torch_scores = model.predict(x_test)
    name = f"{model_name}_onnx"
    fp32 = export_onnx(model, work / "onnx" / "model", name, opset=spec.opset)
    out = [_built("onnx", work / "onnx" / "model", name, spec.opset, fp32, torch_scores, x_test, y_test, fpr)]
    if spec.int8:
        qname = f"{model_name}_onnx_int8"
        q = quantize_int8(fp32, work / "onnx-int8" / "model", qname, model.n_features)
        out.append(_built("onnx-int8", work / "onnx-int8" / "model", qname, spec.opset, q, torch_scores, x_test,
                          y_test, fpr))
    return out


def _built(fmt: str, directory: Path, name: str, opset: int, path: Path, torch_scores: np.ndarray,
           x: np.ndarray, y: np.ndarray, fpr: float) -> BuiltExport:
    scores = onnx_scores(path, x)
    m = metrics(y, scores, fpr)
    if len(x):
        m["max_abs_diff_vs_torch"] = float(np.abs(scores - torch_scores).max())
        m["mean_abs_diff_vs_torch"] = float(np.abs(scores - torch_scores).mean())
    m["size_bytes"] = float(path.stat().st_size)
    return BuiltExport(fmt, directory, name, opset, m)
