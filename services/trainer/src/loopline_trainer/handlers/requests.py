"""on_training_requested: ``loopline.training.requests`` -> a signed, registered version + TrainingCompleted."""

from __future__ import annotations

import asyncio
import logging
import platform
import tempfile
from pathlib import Path

import torch
from loopline.registry.v1 import registry_pb2
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core.errors import LooplineError, invalid
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.objstore import ObjectStore
from loopline_core.signing import SigningKey, TrustStore
from loopline_ml import artifact
from loopline_ml.drift import reference
from loopline_ml.store import fetch_verified, split_uri, upload_signed

from loopline_trainer.adapters.clients import Clients
from loopline_trainer.adapters.datasets import training_arrays
from loopline_trainer.domain.training import evaluate, time_split, train
from loopline_trainer.metrics import RUNS, TRAIN_SECONDS

log = logging.getLogger(__name__)
CODE_VERSION = "loopline-trainer/0.1.0"


class TrainingHandler:
    def __init__(self, clients: Clients, objects: ObjectStore, key: SigningKey, trust: TrustStore,
                 publisher: Publisher, namer: TopicNamer) -> None:
        self.clients = clients
        self.objects = objects
        self.key = key
        self.trust = trust
        self.publisher = publisher
        self.namer = namer

    decode = staticmethod(proto(TrainingRequested, "metadata.event_id", "model_name"))

    async def on_training_requested(self, req: TrainingRequested, _record: Record) -> None:
        """Consumes ``loopline.training.requests``; emits TrainingCompleted on ``loopline.training.results``.

        The run id is the request's event id: a redelivered request finds its version already
        registered and only republishes the outcome.
        """
        run_id = req.metadata.event_id
        done = await self.clients.by_run(req.model_name, run_id)
        if done is None:
            try:
                done = await self._train(req, run_id)
            except LooplineError as exc:
                if not exc.kind.permanent:
                    raise
                RUNS.labels("failed").inc()
                await self._publish(TrainingCompleted(
                    metadata=metadata("trainer", derived_id("trained", run_id), correlation_id=run_id),
                    model_name=req.model_name, succeeded=False, error=exc.message, request_event_id=run_id))
                return
        RUNS.labels("succeeded").inc()
        await self._publish(TrainingCompleted(
            metadata=metadata("trainer", derived_id("trained", run_id), correlation_id=run_id),
            model_name=req.model_name, version=str(done.version), succeeded=True, metrics=dict(done.metrics),
            dataset_digest=done.dataset_digest, request_event_id=run_id))

    async def _publish(self, msg: TrainingCompleted) -> None:
        await self.publisher.publish(self.namer.training_results(), msg.SerializeToString(), key=msg.model_name,
                                     message_type="loopline.trainer.v1.TrainingCompleted")

    async def _train(self, req: TrainingRequested, run_id: str) -> registry_pb2.ModelVersion:
        ts = await self.clients.training_set(req.dataset or "transactions")
        bucket, key = split_uri(ts.uri)
        names = list(ts.feature_names)
        x, y = training_arrays(await self.objects.get_bytes(bucket, key), names, ts.digest)
        window = int(req.params.get("window_rows", "0") or 0)
        if window > 0:  # rows are in event-time order: keep the most recent
            x, y = x[-window:], y[-window:]
        split = time_split(x, y)
        if split.y_train.sum() == 0 or split.y_train.sum() == len(split.y_train) or len(split.y_test) < 10:
            raise invalid(f"training set too small or one-class ({len(y)} rows, "
                          f"{int(y.sum())} positive)")
        seed = req.seed or 7
        with TRAIN_SECONDS.time():
            model, losses = await asyncio.to_thread(train, split.x_train, split.y_train, names, seed)
        metrics = evaluate(model, split.x_test, split.y_test)
        metrics["train_rows"] = float(len(split.y_train))
        metrics["final_loss"] = losses[-1]
        champion = await self.clients.champion(req.model_name)
        if champion is not None:
            try:
                current = await fetch_verified(self.objects, self.trust, champion.artifact_uri,
                                               champion.signature_uri, champion.signer_key_id)
                metrics["champion_auc"] = evaluate(current, split.x_test, split.y_test)["auc"]
                metrics["champion_version"] = float(champion.version)
            except LooplineError as exc:
                log.warning("could not evaluate the champion on the new test set", extra={"error": str(exc)})
        with tempfile.TemporaryDirectory(prefix="loopline-train-") as tmp:
            model_dir = Path(tmp) / "model"
            artifact.save(model_dir, model, reference(split.x_train, names))
            artifact_uri, sig_uri, key_id = await upload_signed(self.objects, self.key, model_dir,
                                                                f"{req.model_name}/{run_id}")
        params = {"seed": str(seed), "hidden": ",".join(map(str, model.config.hidden)), "epochs": "150",
                  "code_version": CODE_VERSION, "torch": torch.__version__, "python": platform.python_version(),
                  "reason": req.reason, "dataset_uri": ts.uri, **dict(req.params)}
        log.info("trained", extra={"model": req.model_name, "run_id": run_id, "metrics": metrics})
        return await self.clients.register(registry_pb2.ModelVersion(
            model_name=req.model_name, artifact_uri=artifact_uri, signature_uri=sig_uri, signer_key_id=key_id,
            dataset_digest=ts.digest, metrics=metrics, params=params, run_id=run_id, feature_names=names))
