"""Composition root of inference: trust store, repository, OIP gRPC server, model-event consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

from loopline_core import runtime
from loopline_core.grpcx import start_server
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.service import serve_until, start_runtime
from loopline_core.signing import TrustStore
from tritonclient.grpc import service_pb2_grpc

from loopline_inference.adapters.prediction_log import PredictionLog
from loopline_inference.adapters.repository import Repository
from loopline_inference.handlers.model_events import ModelEventsHandler
from loopline_inference.handlers.oip import InferenceServicer
from loopline_inference.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = Settings()  # type: ignore[call-arg]
    rt = await start_runtime("inference", settings)
    objects = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value())
    repo = Repository(settings.inference_models, RegistryClient(settings.registry_addr), objects,
                      TrustStore.from_dir(Path(settings.trusted_keys_dir)), rt.publisher, rt.namer)
    prediction_log = PredictionLog(rt.publisher, rt.namer, capacity=settings.prediction_log_capacity,
                                   when_full=settings.prediction_log_when_full,
                                   block_s=settings.prediction_log_block_s, batch_size=settings.prediction_log_batch,
                                   linger_s=settings.prediction_log_linger_s, drain_s=settings.prediction_log_drain_s)
    prediction_log.start()
    servicer = InferenceServicer(repo, prediction_log)
    events = ModelEventsHandler(repo)
    # Every replica must see every model event: a group of its own, starting from now.
    rt.consumer([rt.namer.model_events()], events.decode, events.on_model_changed,
                group=f"{rt.namer.group('inference')}.{uuid.uuid4().hex[:8]}", auto_offset_reset="latest")
    server, port = await start_server(
        [lambda s: service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, s)],
        settings.inference_port, ["inference.GRPCInferenceService"])
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
        await prediction_log.close()  # publishes what is queued; the publisher stops after the closers
        await repo.close()

    rt.closers.append(close)
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
