"""The model artifact: a small torch MLP with its input scaling and training reference.

Layout of an artifact directory (all of it is signed):
  model.pt        state_dict (loaded with weights_only=True: no pickled code runs on load)
  config.json     feature names, layer sizes, input mean/std
  reference.json  per-feature histograms of the training data, for drift statistics
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass
class ModelConfig:
    feature_names: list[str]
    hidden: list[int]
    mean: list[float]
    std: list[float]


def build_network(n_inputs: int, hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class ScoringModel:
    """A loaded artifact: scales inputs and returns fraud probabilities."""

    def __init__(self, config: ModelConfig, network: nn.Sequential) -> None:
        self.config = config
        self.network = network.eval()
        self._mean = torch.tensor(config.mean, dtype=torch.float32)
        self._std = torch.tensor(config.std, dtype=torch.float32)

    @property
    def n_features(self) -> int:
        return len(self.config.feature_names)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities, shape (batch, 1), for inputs of shape (batch, n_features)."""
        with torch.inference_mode():
            t = (torch.from_numpy(np.asarray(x, dtype=np.float32)) - self._mean) / self._std
            return torch.sigmoid(self.network(t)).numpy()


def save(directory: Path, model: ScoringModel, reference: dict[str, object]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.network.state_dict(), directory / "model.pt")
    (directory / "config.json").write_text(json.dumps(asdict(model.config), indent=1))
    (directory / "reference.json").write_text(json.dumps(reference))


def load(directory: Path) -> ScoringModel:
    config = ModelConfig(**json.loads((directory / "config.json").read_text()))
    network = build_network(len(config.feature_names), config.hidden)
    network.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    return ScoringModel(config, network)
