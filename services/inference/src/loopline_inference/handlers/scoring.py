"""One inference request, end to end: inputs (a feature vector, or entities whose vectors the feature
service gives), the arm (champion, canary challenger), the variant, the batch, the fallback, the
shadow copy and the prediction log."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from loopline_core.errors import ErrorKind, LooplineError, invalid
from loopline_core.telemetry import current_traceparent
from prometheus_client import Counter, Histogram
from tritonclient.grpc import service_pb2 as pb

from loopline_inference.adapters.features import OnlineFeatures
from loopline_inference.adapters.prediction_log import PredictionLog, Row
from loopline_inference.adapters.repository import Arm, Serving
from loopline_inference.domain.entities import BytesTensor, entity_request, is_entity_request
from loopline_inference.domain.routing import route, sticky_key
from loopline_inference.domain.tensors import OUTPUT_NAME, TensorIn, to_batch
from loopline_inference.domain.variants import FALLBACK, choose_variant
from loopline_inference.metrics import (
    FALLBACKS,
    LATENCY,
    REQUESTS,
    SHADOW,
    VARIANT_LATENCY,
    VARIANT_REQUESTS,
)

log = logging.getLogger(__name__)

# Load signals, not faults: answering them from another arm would hide the overload they report.
NO_FALLBACK = {ErrorKind.RESOURCE_EXHAUSTED, ErrorKind.DEADLINE_EXCEEDED, ErrorKind.INVALID_ARGUMENT}


@dataclass(frozen=True)
class Scored:
    model: str
    version: int
    role: str
    variant: str
    scores: np.ndarray


def _param(request: pb.ModelInferRequest, name: str) -> pb.InferParameter | None:
    return request.parameters.get(name)


def _string_param(request: pb.ModelInferRequest, name: str) -> str:
    p = _param(request, name)
    if p is None:
        return ""
    if p.WhichOneof("parameter_choice") != "string_param":
        raise invalid(f"parameter {name!r} must be a string")
    return str(p.string_param)


def _number_param(request: pb.ModelInferRequest, name: str) -> float | None:
    p = _param(request, name)
    if p is None:
        return None
    kind = p.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return float(p.int64_param)
    if kind == "uint64_param":
        return float(p.uint64_param)
    if kind == "double_param":
        return float(p.double_param)
    raise invalid(f"parameter {name!r} must be a number")


def _raws(request: pb.ModelInferRequest) -> list[bytes] | None:
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise invalid("raw_input_contents must match inputs one to one")
    return raws or None


class Scorer:
    def __init__(self, prediction_log: PredictionLog, features: OnlineFeatures | None) -> None:
        self.prediction_log = prediction_log
        self.features = features
        self._shadows: set[asyncio.Task[None]] = set()
        # Metric children per label set, looked up once: labels() costs more than the increment itself
        # (six lookups were about a third of the scoring path's CPU per request).
        self._model_metrics: dict[str, tuple[Counter, Histogram]] = {}
        self._variant_metrics: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def _for_model(self, name: str) -> tuple[Counter, Histogram]:
        m = self._model_metrics.get(name)
        if m is None:
            m = self._model_metrics[name] = (REQUESTS.labels(name, "OK"), LATENCY.labels(name))
        return m

    def _for_variant(self, arm: Arm, variant: str) -> tuple[Counter, Histogram]:
        key = (arm.name, arm.role, variant)
        m = self._variant_metrics.get(key)
        if m is None:
            m = self._variant_metrics[key] = (VARIANT_REQUESTS.labels(*key), VARIANT_LATENCY.labels(*key))
        return m

    async def score(self, serving: Serving, request: pb.ModelInferRequest, deadline: float | None) -> Scored:
        name = serving.champion.name
        started = time.perf_counter()
        try:
            scored = await self._score(serving, request, deadline, started)
        except LooplineError as exc:
            REQUESTS.labels(name, exc.kind.value).inc()
            raise
        ok, latency = self._for_model(name)
        ok.inc()
        latency.observe(time.perf_counter() - started)
        return scored

    async def _score(self, serving: Serving, request: pb.ModelInferRequest, deadline: float | None,
                     started: float) -> Scored:
        for out in request.outputs:
            if out.name != OUTPUT_NAME:
                raise invalid(f"unknown output {out.name!r}; the model gives {OUTPUT_NAME!r}")
        request_id = request.id or str(uuid.uuid4())
        entity_param = _string_param(request, "entity_ids")
        entities = entity_param.split(",") if entity_param else []
        pinned = request.model_version
        arm = serving.champion
        shadow = False
        if pinned:
            arm = next(a for a in serving.arms() if str(a.version) == pinned)
        else:
            r = route(serving.rollout, sticky_key_for(serving, entities, request_id),
                      challenger_loaded=serving.challenger is not None, salt=arm.name)
            arm = serving.challenger if r.serve == "challenger" and serving.challenger else serving.champion
            shadow = r.shadow and serving.challenger is not None
        x, entities = await self._inputs(arm, request, entities, deadline)
        variant = choose_variant(serving.variants, arm.variants, requested=_string_param(request, "variant"),
                                 latency_budget_ms=_number_param(request, "latency_budget_ms"))
        try:
            scores = await self._run(arm, variant, x, deadline)
            answered = Scored(arm.name, arm.version, arm.role, variant, scores)
        except LooplineError as exc:
            if exc.kind in NO_FALLBACK or (arm is serving.champion and variant == FALLBACK) or pinned:
                raise
            # The routed arm or variant failed: the champion's in-process variant answers.
            FALLBACKS.labels(arm.name, f"{arm.role}/{variant}", exc.kind.value).inc()
            log.warning("falling back to the champion's torch variant",
                        extra={"model": arm.name, "version": arm.version, "role": arm.role, "variant": variant,
                               "error": exc.message})
            self._log(arm, variant, request_id, x, None, started, entities, error=exc.message)
            champion = serving.champion
            scores = await self._run(champion, FALLBACK, x, deadline)
            answered = Scored(champion.name, champion.version, champion.role, FALLBACK, scores)
            arm, variant = champion, FALLBACK
        await self._log_async(arm, variant, request_id, x, answered.scores, started, entities)
        if shadow and serving.challenger is not None:
            self._shadow(serving.challenger, serving, request_id, x, entities)
        return answered

    async def _inputs(self, arm: Arm, request: pb.ModelInferRequest, entities: list[str],
                      deadline: float | None) -> tuple[np.ndarray, list[str]]:
        raws = _raws(request)
        names = [t.name for t in request.inputs]
        if not is_entity_request(names):
            tensors = [TensorIn(t.name, t.datatype, tuple(t.shape), raws[i] if raws else None,
                                list(t.contents.fp32_contents)) for i, t in enumerate(request.inputs)]
            return to_batch(tensors, arm.model.n_features), entities
        if self.features is None:
            raise LooplineError(ErrorKind.FAILED_PRECONDITION,
                                "entity requests need the feature service (LOOPLINE_FEATURE_ADDR is not set)")
        req = entity_request([BytesTensor(t.name, t.datatype, tuple(t.shape), raws[i] if raws else None,
                                          list(t.contents.bytes_contents)) for i, t in enumerate(request.inputs)])
        as_of = _number_param(request, "as_of")
        ts = None
        if as_of is not None:
            ts = Timestamp()
            ts.FromNanoseconds(int(as_of * 1e9))
        timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
        x = await self.features.vectors(arm.feature_view.split(":")[0] or "transactions", req,
                                        arm.model.config.feature_names, ts, timeout)
        if not np.isfinite(x).all():
            raise LooplineError(ErrorKind.FAILED_PRECONDITION, "the feature service returned non-finite values")
        return x, req.entity_ids

    async def _run(self, arm: Arm, variant: str, x: np.ndarray, deadline: float | None) -> np.ndarray:
        began = time.perf_counter()
        scores = await arm.batchers[variant].submit(x, deadline)
        requests, latency = self._for_variant(arm, variant)
        requests.inc(len(x))
        latency.observe(time.perf_counter() - began)
        return scores

    def _shadow(self, challenger: Arm, serving: Serving, request_id: str, x: np.ndarray,
                entities: list[str]) -> None:
        """The challenger scores a copy in the background; the caller already has its answer."""
        variant = choose_variant(serving.variants, challenger.variants)

        async def copy() -> None:
            started = time.perf_counter()
            try:
                scores = await self._run(challenger, variant, x, None)
            except LooplineError as exc:
                SHADOW.labels(challenger.name, "failed").inc()
                self._log(challenger, variant, request_id, x, None, started, entities, error=exc.message, shadow=True)
                return
            SHADOW.labels(challenger.name, "scored").inc()
            await self._log_async(challenger, variant, request_id, x, scores, started, entities, shadow=True)

        task = asyncio.create_task(copy())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    def _rows(self, arm: Arm, variant: str, request_id: str, x: np.ndarray, scores: np.ndarray | None,
              started: float, entities: list[str], *, error: str = "", shadow: bool = False) -> list[Row]:
        latency_ms = (time.perf_counter() - started) * 1000
        names = arm.model.config.feature_names
        now = time.time()
        suffix = ("#shadow" if shadow else "") + (f"#error-v{arm.version}" if error else "")
        empty = np.zeros(0, dtype=np.float32)
        parent = current_traceparent()  # a shadow copy's task inherited the call's context
        return [Row(arm.name, arm.version, request_id,
                    (f"{request_id}/{i}" if len(x) > 1 else request_id) + suffix, names, x[i],
                    scores[i:i + 1] if scores is not None else empty, latency_ms,
                    entities[i] if i < len(entities) else "", now, arm.role, variant, shadow, error, parent)
                for i in range(len(x))]

    async def _log_async(self, arm: Arm, variant: str, request_id: str, x: np.ndarray, scores: np.ndarray | None,
                         started: float, entities: list[str], *, error: str = "", shadow: bool = False) -> None:
        await self.prediction_log.record(self._rows(arm, variant, request_id, x, scores, started, entities,
                                                    error=error, shadow=shadow))

    def _log(self, arm: Arm, variant: str, request_id: str, x: np.ndarray, scores: np.ndarray | None,
             started: float, entities: list[str], *, error: str = "", shadow: bool = False) -> None:
        task = asyncio.create_task(self._log_async(arm, variant, request_id, x, scores, started, entities,
                                                   error=error, shadow=shadow))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def close(self) -> None:
        if self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)
        if self.features is not None:
            await self.features.close()


def sticky_key_for(serving: Serving, entities: list[str], request_id: str) -> str:
    return sticky_key(serving.rollout, entities[0] if entities else "", request_id)
