"""What a run records in the registry: flat metrics, slices, the Run (provenance). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.events import timestamp
from loopline_ml.evaluation import SliceResult
from loopline_ml.provenance import CodeVersion

from loopline_trainer.domain.lineage import Trained
from loopline_trainer.domain.training import Params


def slices(results: list[SliceResult]) -> list[pb.SliceMetrics]:
    return [pb.SliceMetrics(slice=r.slice, rows=r.rows, positives=r.positives, metrics=r.metrics,
                            champion_metrics=r.champion_metrics) for r in results]


def flat_metrics(results: list[SliceResult], trained: Trained, champion_version: int) -> dict[str, float]:
    """The whole test set's metrics, the champion's as ``champion_<name>``, and the row counts."""
    overall = results[0]
    out = dict(overall.metrics)
    out.update({f"champion_{k}": v for k, v in overall.champion_metrics.items()})
    if champion_version:
        out["champion_version"] = float(champion_version)
    y, split = trained.snapshot.y, trained.split
    out.update({"dataset_rows": float(len(y)), "dataset_positives": float(y.sum()),
                "train_rows": float(len(y[split.train])), "validation_rows": float(len(y[split.validation])),
                "test_rows": float(len(y[split.test])), "test_positives": float(y[split.test].sum())})
    if trained.fitted.losses:
        out["final_loss"] = trained.fitted.losses[-1]
    return out


@dataclass(frozen=True)
class Source:
    """The request and the snapshot a run trained from."""

    run_id: str
    reason: str
    dataset: str
    feature_view: str
    uri: str
    digest: str
    manifest_uri: str
    as_of: Timestamp


def run_record(src: Source, params: Params, code: CodeVersion, trained: Trained, *, started_at: float,
               wall_time_s: float) -> pb.Run:
    times = trained.snapshot.event_time
    f = trained.fitted
    trajectory = [pb.Epoch(epoch=i + 1, loss=loss, validation_loss=f.validation_losses[i]
                           if i < len(f.validation_losses) else 0.0) for i, loss in enumerate(f.losses)]
    return pb.Run(
        run_id=src.run_id, git_commit=code.git_commit, git_dirty=code.git_dirty, lock_hash=code.lock_hash,
        python_version=code.python_version, torch_version=code.torch_version, numpy_version=code.numpy_version,
        device="cpu", seed=params.seed, params=params.as_strings(), dataset=src.dataset, dataset_uri=src.uri,
        dataset_digest=src.digest, dataset_manifest_uri=src.manifest_uri, feature_view=src.feature_view,
        dataset_as_of=src.as_of, data_from=timestamp(float(times.min())) if len(times) else None,
        data_to=timestamp(float(times.max())) if len(times) else None, trajectory=trajectory,
        wall_time_s=wall_time_s, started_at=timestamp(started_at), request_event_id=src.run_id, reason=src.reason,
        artifact_digest=trained.artifact_digest)
