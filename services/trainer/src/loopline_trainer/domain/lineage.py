"""From a snapshot and parameters to an artifact directory, and back from a recorded Run. Pure (local files).

``refit`` is the proof of the lineage: given the Run a version recorded and the snapshot bytes its
digest names, it rebuilds the artifact, whose digest must equal the recorded ``artifact_digest``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loopline.registry.v1 import registry_pb2 as pb
from loopline_ml import artifact
from loopline_ml.profile import build_profile, column_profile
from loopline_ml.provenance import dir_digest

from loopline_trainer.domain.snapshot import Snapshot, decode
from loopline_trainer.domain.training import Fitted, Params, Split, Weights, fit, time_split, window


@dataclass(frozen=True)
class Trained:
    snapshot: Snapshot
    """The rows the run used (after ``window_rows``)."""
    split: Split
    fitted: Fitted
    artifact_digest: str


MONITORING_PARAM = "monitoring"
"""The run parameter holding the spec's ``monitoring`` section (JSON) the profile was built with."""


def train_to_dir(snap: Snapshot, params: Params, into: Path, init: Weights | None = None,
                 monitoring: Mapping[str, Any] | None = None) -> Trained:
    """Window, split, fit (from ``init`` for a warm start) and save the torch artifact into ``into``, with
    the reference profile of its training window (columns typed by ``monitoring.categorical``, and the
    model's own scores of them) that the monitor compares live traffic with; the snapshot must be
    trainable."""
    rows = window(snap, params)
    split = time_split(len(rows), params.holdout, params.validation)
    fitted = fit(rows, split, params, init)
    mon = json.loads(json.dumps(dict(monitoring or {}), sort_keys=True))  # one form, as refit reads it back
    categorical = set(mon.get("categorical", []))
    types = {n: "cat" if n in categorical else "num" for n in rows.feature_names}
    # the inputs of the whole training window: the world the version was fitted for; its scores on the rows
    # it did not fit (validation and test): scores on its own training rows are more confident than live ones
    profile = build_profile(rows.x, rows.feature_names, types, None, mon)
    held_out = rows.x[split.validation.start:]
    profile["prediction"] = column_profile(fitted.model.predict(held_out).ravel().astype(np.float64), "num")
    artifact.save(into, fitted.model, profile)
    return Trained(rows, split, fitted, dir_digest(into))


def refit(run: pb.Run, data: bytes, feature_names: list[str], into: Path) -> Trained:
    """Re-fit a recorded run from its snapshot bytes (refused unless they hash to ``run.dataset_digest``)."""
    snap = decode(data, feature_names, run.dataset_digest)
    monitoring = json.loads(run.params.get(MONITORING_PARAM, "{}"))
    return train_to_dir(snap, Params.from_strings(run.params), into, None, monitoring)
