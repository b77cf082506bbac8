"""GRPCInferenceService (Open Inference Protocol v2, Triton's own generated code)."""

from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
from loopline_core.errors import ErrorKind, LooplineError, not_found
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loopline_inference.adapters.prediction_log import PredictionLog, Row
from loopline_inference.adapters.repository import Repository, Served
from loopline_inference.domain.tensors import INPUT_NAME, OUTPUT_NAME, TensorIn, to_batch
from loopline_inference.metrics import LATENCY, REQUESTS

SERVER_NAME = "loopline"
SERVER_VERSION = "0.1.0"
PLATFORM = "pytorch_libtorch"


def _inputs(request: pb.ModelInferRequest, n_features: int) -> np.ndarray:
    """The request's input batch, or INVALID_ARGUMENT."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise LooplineError(ErrorKind.INVALID_ARGUMENT, "raw_input_contents must match inputs one to one")
    for out in request.outputs:
        if out.name != OUTPUT_NAME:
            raise LooplineError(ErrorKind.INVALID_ARGUMENT, f"unknown output {out.name!r}")
    tensors = [TensorIn(t.name, t.datatype, tuple(t.shape), raws[i] if raws else None,
                        list(t.contents.fp32_contents)) for i, t in enumerate(request.inputs)]
    return to_batch(tensors, n_features)


def _rows(served: Served, request_id: str, x: np.ndarray, scores: np.ndarray, latency_ms: float,
          entities: list[str]) -> list[Row]:
    names = served.model.config.feature_names
    now = time.time()
    return [Row(served.name, served.version, request_id, f"{request_id}/{i}" if len(x) > 1 else request_id, names,
                x[i], scores[i], latency_ms, entities[i] if i < len(entities) else "", now) for i in range(len(x))]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repo: Repository, prediction_log: PredictionLog) -> None:
        self.repo = repo
        self.prediction_log = prediction_log

    def _served(self, name: str, version: str = "") -> Served:
        if name not in self.repo.names:
            raise not_found(f"unknown model {name!r}")
        served = self.repo.get(name)
        if served is None:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"model {name!r} has no champion loaded yet")
        if version and version != str(served.version):
            raise not_found(f"model {name!r} version {version} is not loaded (serving {served.version})")
        return served

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.repo.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> pb.ModelReadyResponse:
        served = self.repo.get(request.name)
        ok = served is not None and (not request.version or request.version == str(served.version))
        return pb.ModelReadyResponse(ready=ok)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        s = self._served(request.name, request.version)
        n = s.model.n_features
        return pb.ModelMetadataResponse(
            name=s.name, versions=[str(s.version)], platform=PLATFORM,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, n])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 1])])

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext  # noqa: N802
                          ) -> pb.ModelConfigResponse:
        s = self._served(request.name, request.version)
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=s.name, platform=PLATFORM, max_batch_size=0,
            input=[mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, s.model.n_features])],
            output=[mc.ModelOutput(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, 1])]))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> pb.ModelInferResponse:
        """Score a batch; each row is queued for ``loopline.predictions.<model>`` (published off the response path)."""
        started = time.perf_counter()
        try:
            served = self._served(request.model_name, request.model_version)
            x = _inputs(request, served.model.n_features)
            scores = served.model.predict(x).astype("<f4")
        except LooplineError as exc:
            REQUESTS.labels(request.model_name or "?", exc.kind.value).inc()
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        LATENCY.labels(served.name).observe(latency_ms / 1000)
        REQUESTS.labels(served.name, "OK").inc()
        entity_param = request.parameters.get("entity_ids")
        entities = entity_param.string_param.split(",") if entity_param is not None else []
        await self.prediction_log.record(_rows(served, request.id or str(uuid.uuid4()), x, scores, latency_ms,
                                               entities))
        return pb.ModelInferResponse(
            model_name=served.name, model_version=str(served.version), id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype="FP32",
                                                             shape=list(scores.shape))],
            raw_output_contents=[scores.tobytes()])
