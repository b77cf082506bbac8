"""ONNX exports of a scoring model, laid out as Triton model repositories.

The graph holds the whole scorer — input scaling, the MLP, the sigmoid — so a server needs only the
raw feature vector: input ``features`` FP32 [-1, n], output ``score`` FP32 [-1, 1], batch dynamic.
Layout of an export directory::

    <triton_name>/config.pbtxt
    <triton_name>/1/model.onnx
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from loopline_ml.artifact import ScoringModel

INPUT, OUTPUT = "features", "score"


class _Scorer(nn.Module):
    def __init__(self, model: ScoringModel) -> None:
        super().__init__()
        self.network = model.network
        self.register_buffer("mean", torch.tensor(model.config.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(model.config.std, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scaled = (features - self.get_buffer("mean")) / self.get_buffer("std")
        out: torch.Tensor = torch.sigmoid(self.network(scaled))
        return out


def triton_config(name: str, n_features: int) -> str:
    """``max_batch_size: 0``: the batch is the first dimension of the tensors themselves (-1)."""
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
            f'input [\n  {{\n    name: "{INPUT}"\n    data_type: TYPE_FP32\n    dims: [ -1, {n_features} ]\n  }}\n]\n'
            f'output [\n  {{\n    name: "{OUTPUT}"\n    data_type: TYPE_FP32\n    dims: [ -1, 1 ]\n  }}\n]\n')


def _layout(directory: Path, name: str, n_features: int) -> Path:
    (directory / name / "1").mkdir(parents=True, exist_ok=True)
    (directory / name / "config.pbtxt").write_text(triton_config(name, n_features))
    return directory / name / "1" / "model.onnx"


def export_onnx(model: ScoringModel, directory: Path, name: str, *, opset: int = 17) -> Path:
    """FP32 export with the TorchScript exporter (fast, no onnxscript); returns the model.onnx path."""
    path = _layout(directory, name, model.n_features)
    scorer = _Scorer(model).eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of dynamo, which
        warnings.simplefilter("ignore")  # needs onnxscript and is far slower for a graph this small
        torch.onnx.export(scorer, (torch.zeros(1, model.n_features),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return path


def quantize_int8(fp32: Path, directory: Path, name: str, n_features: int) -> Path:
    """Dynamic quantization: weights stored as INT8 (QInt8, one scale per output channel, which keeps the
    scores of these narrow layers closer to FP32 than one scale per tensor), activations at run time."""
    # here, not at the top: onnxruntime.quantization imports onnx, which only the trainer needs (inference
    # imports this module for INPUT/OUTPUT and its image carries no onnx)
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    path = _layout(directory, name, n_features)
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True)
    return path


def onnx_scores(path: Path, x: np.ndarray) -> np.ndarray:
    """Scores, shape (batch, 1), from onnxruntime on the CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT], {INPUT: np.asarray(x, dtype=np.float32)})[0]
    return np.asarray(out, dtype=np.float32)
