"""Composition root of inference: trust store, repository, OIP gRPC server, model-event consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from grpc_health.v1 import health, health_pb2
from loopline.registry.v1 import registry_pb2
from loopline_core import runtime
from loopline_core.grpcx import start_server
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.service import serve_until, start_runtime
from loopline_core.signing import TrustStore
from loopline_ml.artifact import ScoringModel
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2_grpc

from loopline_inference.adapters.backends import Backend, load_variants
from loopline_inference.adapters.features import OnlineFeatures
from loopline_inference.adapters.prediction_log import PredictionLog
from loopline_inference.adapters.repository import Repository
from loopline_inference.domain.batching import Batcher, Stats
from loopline_inference.handlers.model_events import ModelEventsHandler
from loopline_inference.handlers.oip import InferenceServicer
from loopline_inference.handlers.scoring import Scorer
from loopline_inference.metrics import QueueDepth
from loopline_inference.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = Settings()  # type: ignore[call-arg]
    rt = await start_runtime("inference", settings)
    torch.set_num_threads(settings.inference_torch_threads)
    objects = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value())
    trust = TrustStore.from_dir(Path(settings.trusted_keys_dir))
    executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="batch")
    health_servicer = health.aio.HealthServicer()

    async def on_ready(ready: bool) -> None:
        # gRPC health says SERVING only once every configured model is loaded (a load balancer's signal)
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await health_servicer.set(name, status)

    def batcher(backend: Backend, stats: Stats) -> Batcher:
        return Batcher(backend.predict, max_batch=settings.inference_max_batch,
                       max_delay_s=settings.inference_max_queue_delay_ms / 1000,
                       max_queue=settings.inference_max_queue, concurrency=settings.inference_workers, stats=stats,
                       eager=settings.inference_eager_when_idle)

    async def variants(v: registry_pb2.ModelVersion, model: ScoringModel) -> dict[str, Backend]:
        return await load_variants(v, model, objects, trust, executor, onnx_threads=settings.inference_torch_threads,
                                   triton_url=settings.inference_triton_url)

    repo = Repository(settings.inference_models, RegistryClient(settings.registry_addr), objects, trust,
                      rt.publisher, rt.namer, load_variants=variants, batcher=batcher, on_ready=on_ready)
    REGISTRY.register(QueueDepth(repo.queue_depths))
    prediction_log = PredictionLog(rt.publisher, rt.namer, capacity=settings.prediction_log_capacity,
                                   when_full=settings.prediction_log_when_full,
                                   block_s=settings.prediction_log_block_s, batch_size=settings.prediction_log_batch,
                                   linger_s=settings.prediction_log_linger_s, drain_s=settings.prediction_log_drain_s)
    prediction_log.start()
    scorer = Scorer(prediction_log, OnlineFeatures(settings.feature_addr) if settings.feature_addr else None)
    servicer = InferenceServicer(repo, scorer, max_batch=settings.inference_max_batch,
                                 max_delay_ms=settings.inference_max_queue_delay_ms)
    events = ModelEventsHandler(repo)
    # Every replica must see every model event: a group of its own, starting from now.
    rt.consumer([rt.namer.model_events()], events.decode, events.on_model_changed,
                group=f"{rt.namer.group('inference')}.{uuid.uuid4().hex[:8]}", auto_offset_reset="latest")
    server, port = await start_server(
        [lambda s: service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, s)],
        settings.inference_port, [SERVICE], health_servicer=health_servicer, serving=False, reflect=[SERVICE])
    logging.getLogger(__name__).info("serving", extra={"grpc_port": port})

    async def reconcile_forever() -> None:
        while True:
            for name in settings.inference_models:
                await repo.reconcile(name)
            await asyncio.sleep(settings.inference_reconcile_s)

    reconciler = asyncio.create_task(reconcile_forever())

    async def close() -> None:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
        await server.stop(5)  # lets in-flight calls finish (and queue their rows)
        await scorer.close()  # shadow copies finish and log
        await prediction_log.close()  # publishes what is queued; the publisher stops after the closers
        await repo.close()
        executor.shutdown(wait=False, cancel_futures=True)

    rt.closers.append(close)
    await serve_until(rt, stop)


SERVICE = "inference.GRPCInferenceService"


def run() -> None:
    runtime.run(main)
