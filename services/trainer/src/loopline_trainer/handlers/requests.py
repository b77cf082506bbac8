"""on_training_requested: ``loopline.training.requests`` -> a signed, evaluated, gated, registered version
with its exports and model card, then TrainingCompleted on ``loopline.training.results``."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from loopline.registry.v1 import registry_pb2 as pb
from loopline.trainer.v1.events_pb2 import TrainingCompleted, TrainingRequested
from loopline_core.errors import LooplineError, invalid
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.objstore import ObjectStore
from loopline_core.refusals import report_refusal
from loopline_core.registry import RegistryClient, stage_name
from loopline_core.signing import SigningKey, TrustStore
from loopline_ml import spec as specs
from loopline_ml.card import build_card, render_markdown
from loopline_ml.evaluation import evaluate, slice_masks
from loopline_ml.gate import evaluate_gate
from loopline_ml.provenance import code_version
from loopline_ml.store import MODELS, fetch_verified, split_uri, upload_signed

from loopline_trainer.adapters.clients import FeatureClient
from loopline_trainer.domain.exporting import build_exports
from loopline_trainer.domain.lineage import MONITORING_PARAM, train_to_dir
from loopline_trainer.domain.record import Source, flat_metrics, run_record, slices
from loopline_trainer.domain.snapshot import decode
from loopline_trainer.domain.training import Weights, check_trainable, effective_params, time_split, window
from loopline_trainer.metrics import RUNS, TRAIN_SECONDS

log = logging.getLogger(__name__)


def declared_model(spec: specs.ModelSpec) -> pb.Model:
    """What the spec says of the model as a whole: description, approval, rollout and variant policies."""
    v = spec.variants
    return pb.Model(name=spec.name, description=spec.description, intended_use=spec.intended_use, owner=spec.owner,
                    requires_approval=spec.requires_approval, rollout=pb.RolloutPolicy(**spec.rollout.model_dump()),
                    variants=pb.VariantPolicy(default_variant=v.default_variant, fast_variant=v.fast_variant or "",
                                              fast_budget_ms=v.fast_budget_ms))


class TrainingHandler:
    def __init__(self, registry: RegistryClient, features: FeatureClient, objects: ObjectStore, key: SigningKey,
                 trust: TrustStore, publisher: Publisher, namer: TopicNamer, models_dir: Path) -> None:
        self.registry = registry
        self.features = features
        self.objects = objects
        self.key = key
        self.trust = trust
        self.publisher = publisher
        self.namer = namer
        self.models_dir = models_dir

    decode = staticmethod(proto(TrainingRequested, "metadata.event_id", "model_name"))

    async def on_training_requested(self, req: TrainingRequested, _record: Record) -> None:
        """Consumes ``loopline.training.requests``; emits TrainingCompleted on ``loopline.training.results``.

        The run id is the request's event id: a redelivered request finds its version already
        registered and only republishes the outcome (writing the card if it is missing), never
        retrains. A request that cannot succeed (no spec, too little data, a refused data set) gets a
        failed TrainingCompleted; transient trouble (registry, feature service, S3 down) raises, so the
        record is retried.
        """
        run_id = req.metadata.event_id
        result_meta = metadata("trainer", derived_id("trained", run_id), correlation_id=run_id)
        try:
            spec = specs.load(self.models_dir, req.model_name)
            await self.registry.apply_model(declared_model(spec), actor="trainer")
            done = await self.registry.by_run(req.model_name, run_id)
            if done is None:
                sent, done = await self._train(req, run_id, spec)
                # the card from what this run recorded, numbered as the registry numbered it
                sent.version, sent.stage = done.version, done.stage
                sent.created_at.CopyFrom(done.created_at)
                await self._write_card(sent, spec)
            elif not await self.objects.exists(*split_uri(done.model_card_uri or self._card_uri(req.model_name,
                                                                                                 run_id))):
                await self._write_card(done, spec)
        except LooplineError as exc:
            if not exc.kind.permanent:
                raise
            RUNS.labels("failed").inc()
            log.warning("training failed", extra={"model": req.model_name, "run_id": run_id, "error": exc.message})
            await self._publish(TrainingCompleted(metadata=result_meta, model_name=req.model_name, succeeded=False,
                                                  error=exc.message, request_event_id=run_id))
            return
        RUNS.labels("succeeded").inc()
        await self._publish(TrainingCompleted(
            metadata=result_meta, model_name=req.model_name, version=str(done.version), succeeded=True,
            metrics=dict(done.metrics), dataset_digest=done.dataset_digest, request_event_id=run_id,
            gate_passed=done.gate.passed, gate_summary=done.gate.summary, stage=stage_name(done.stage)))

    async def _publish(self, msg: TrainingCompleted) -> None:
        await self.publisher.publish(self.namer.training_results(), msg.SerializeToString(), key=msg.model_name,
                                     message_type="loopline.trainer.v1.TrainingCompleted")

    @staticmethod
    def _card_uri(model: str, run_id: str) -> str:
        return f"s3://{MODELS}/{model}/{run_id}/card.json"

    async def _write_card(self, v: pb.ModelVersion, spec: specs.ModelSpec) -> None:
        card = build_card(v, declared_model(spec), spec.limitations, min_slice_rows=spec.evaluation.min_slice_rows)
        bucket, key = split_uri(v.model_card_uri or self._card_uri(v.model_name, v.run_id))
        await self.objects.put_bytes(bucket, key.rsplit(".", 1)[0] + ".md", render_markdown(card).encode(),
                                     content_type="text/markdown")
        await self.objects.put_bytes(bucket, key, json.dumps(card, indent=1).encode(),
                                     content_type="application/json")

    async def _train(self, req: TrainingRequested, run_id: str,
                     spec: specs.ModelSpec) -> tuple[pb.ModelVersion, pb.ModelVersion]:
        """Train, evaluate, gate, export and register; returns (what was sent, what the registry stored)."""
        started, t0 = time.time(), time.perf_counter()
        name = req.model_name
        as_of = req.as_of if req.HasField("as_of") else req.metadata.occurred_at
        view = spec.training.feature_view
        ts = await self.features.training_set(view, req.dataset or view, as_of,
                                              req.window_start if req.HasField("window_start") else None)
        names = list(ts.feature_names)
        snap = decode(await self.objects.get_bytes(*split_uri(ts.uri)), names, ts.digest)
        params = effective_params(spec.training, dict(req.params), req.seed if req.has_seed else None,
                                  window_start=req.window_start.ToNanoseconds() / 1e9
                                  if req.HasField("window_start") else 0.0,
                                  warm_start_version=req.warm_start_version)
        monitoring = spec.monitoring.model_dump(mode="json")  # typed columns and checks, into the signed profile
        rows = window(snap, params)
        check_trainable(rows, time_split(len(rows), params.holdout, params.validation), spec.training.min_rows,
                        spec.training.min_positives, since=params.window_start)
        with tempfile.TemporaryDirectory(prefix="loopline-train-") as tmp:
            work = Path(tmp)
            init = await self._warm_start(name, params.warm_start_version, names, work / "warm") \
                if params.warm_start_version else None
            with TRAIN_SECONDS.time():
                trained = await asyncio.to_thread(train_to_dir, snap, params, work / "torch" / "model", init,
                                                  monitoring)
            wall = time.perf_counter() - t0
            artifact_uri, sig_uri, key_id = await upload_signed(self.objects, self.key, work / "torch" / "model",
                                                                f"{name}/{run_id}")
            test = trained.split.test
            x_test, y_test = trained.snapshot.x[test], trained.snapshot.y[test]
            model = trained.fitted.model
            champion, champion_scores, champion_error = await self._champion_scores(name, names, x_test, work)
            ev = spec.evaluation
            results = evaluate(y_test, model.predict(x_test), slice_masks(trained.snapshot.columns(test), ev), ev.fpr,
                               champion_scores)
            gate = evaluate_gate(spec.gate, results, min_slice_rows=ev.min_slice_rows,
                                 champion_version=champion.version if champion else 0, champion_error=champion_error)
            exports = []
            if spec.exports.onnx is not None:
                built = await asyncio.to_thread(build_exports, model, name, spec.exports.onnx, work / "exports",
                                                x_test, y_test, ev.fpr)
                for b in built:
                    uri, esig, ekey = await upload_signed(self.objects, self.key, b.directory,
                                                          f"{name}/{run_id}/{b.format}")
                    exports.append(pb.Export(format=b.format, uri=uri, signature_uri=esig, signer_key_id=ekey,
                                             opset=b.opset, metrics=b.metrics, triton_model_name=b.triton_name))
        src = Source(run_id, req.reason, req.dataset or view, ts.feature_view or view, ts.uri, ts.digest,
                     ts.manifest_uri, ts.as_of if ts.HasField("as_of") else as_of)
        run = run_record(src, params, code_version(), trained, started_at=started, wall_time_s=wall)
        run.params[MONITORING_PARAM] = json.dumps(monitoring, sort_keys=True)  # refit rebuilds the same profile
        # beside the effective params, never over them: a request cannot rewrite provenance this way
        run.params.update({k: v for k, v in _request_context(req).items() if k not in run.params})
        metrics = flat_metrics(results, trained, champion.version if champion else 0)
        log.info("trained", extra={"model": name, "run_id": run_id, "gate": gate.summary,
                                   "auc_roc": metrics.get("auc_roc")})
        sent = pb.ModelVersion(
            model_name=name, artifact_uri=artifact_uri, signature_uri=sig_uri, signer_key_id=key_id,
            dataset_digest=ts.digest, metrics=metrics, params=run.params, run_id=run_id, feature_names=names,
            gate=gate, run=run, slices=slices(results), exports=exports, model_card_uri=self._card_uri(name, run_id))
        registered: pb.ModelVersion = await self.registry.register(sent)
        return sent, registered

    async def _warm_start(self, name: str, version: int, names: list[str], work: Path) -> Weights:
        """The weights of ``version``'s verified artifact (loaded as the gate loads the champion). A
        version that does not exist, is refused or has other features fails the run (permanent)."""
        v = await self.registry.get(name, version)
        try:
            start = await fetch_verified(self.objects, self.trust, v.artifact_uri, v.signature_uri, v.signer_key_id,
                                         work)
        except LooplineError as exc:
            if exc.kind.permanent and "refusal" in exc.details:
                await report_refusal(self.publisher, self.namer, service="trainer", model=name, version=version,
                                     artifact_uri=v.artifact_uri, signer_key_id=v.signer_key_id, error=exc)
            if exc.kind.permanent:
                raise invalid(f"cannot warm start from v{version}: {exc.message}") from exc
            raise
        if start.config.feature_names != names:
            raise invalid(f"cannot warm start from v{version}: its features {start.config.feature_names} differ "
                          f"from the training set's")
        weights: Weights = start.network.state_dict()
        return weights

    async def _champion_scores(self, name: str, names: list[str], x: np.ndarray,
                               work: Path) -> tuple[pb.ModelVersion | None, np.ndarray | None, str]:
        """The champion's scores on the candidate's test rows; with an error text instead when it cannot
        be loaded or used (the gate's change checks then fail closed). A refused artifact is reported."""
        champion = await self.registry.champion(name)
        if champion is None:
            return None, None, ""
        try:
            current = await fetch_verified(self.objects, self.trust, champion.artifact_uri, champion.signature_uri,
                                           champion.signer_key_id, work / "champion")
        except LooplineError as exc:
            if not exc.kind.permanent:
                raise
            if "refusal" in exc.details:
                await report_refusal(self.publisher, self.namer, service="trainer", model=name,
                                      version=champion.version, artifact_uri=champion.artifact_uri,
                                      signer_key_id=champion.signer_key_id, error=exc)
            log.warning("champion could not be loaded", extra={"model": name, "version": champion.version,
                                                               "error": exc.message})
            return champion, None, exc.message
        if current.config.feature_names != names:
            return champion, None, f"its features {current.config.feature_names} differ from the training set's"
        return champion, current.predict(x), ""



def _request_context(req: TrainingRequested) -> dict[str, str]:
    """What asked for the run ("trigger") and why ("evidence", JSON), recorded beside its params."""
    return {k: v for k, v in (("trigger", req.trigger), ("evidence", req.evidence)) if v}
