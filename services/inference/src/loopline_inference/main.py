"""Composition root of inference: trust store, repository, OIP gRPC server, model-event consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from collections.abc import Generator as Gen
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import uvicorn
from grpc_health.v1 import health, health_pb2
from loopline.registry.v1 import registry_pb2
from loopline_core import runtime
from loopline_core.auth import ServerAuth
from loopline_core.grpcx import start_server
from loopline_core.kafka import Record
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.service import Runtime, serve_until, start_runtime
from loopline_core.settings import load
from loopline_core.signing import TrustStore
from loopline_llm.engine import EngineConfig
from loopline_ml.artifact import ScoringModel
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2_grpc

from loopline_inference.adapters.backends import Backend, load_variants
from loopline_inference.adapters.features import OnlineFeatures
from loopline_inference.adapters.generation_log import GenerationLog
from loopline_inference.adapters.guardrails import Guardrails
from loopline_inference.adapters.llm import LlmRepository
from loopline_inference.adapters.prediction_log import PredictionLog
from loopline_inference.adapters.repository import Repository
from loopline_inference.domain.batching import Batcher, Stats
from loopline_inference.domain.pricing import PriceTable
from loopline_inference.domain.ratelimit import Limit, RateLimiter
from loopline_inference.handlers import openai_api
from loopline_inference.handlers.generate import Generator
from loopline_inference.handlers.model_events import ModelEventsHandler
from loopline_inference.handlers.oip import Admission, InferenceServicer
from loopline_inference.handlers.scoring import Scorer
from loopline_inference.metrics import QueueDepth
from loopline_inference.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "inference")
    auth = ServerAuth.from_settings(settings, "inference")  # before anything starts: a missing file is one line
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
    llms, generation_log, generator = await _llm_side(settings, rt, objects, trust)
    admission = Admission(auth, _limiter(settings))
    servicer = InferenceServicer(repo, scorer, max_batch=settings.inference_max_batch,
                                 max_delay_ms=settings.inference_max_queue_delay_ms, generator=generator,
                                 admission=admission)
    # /readyz: ready only when every configured model and LLM is loaded and serving
    rt.checks.append(lambda: repo.ready and all(llms.ready(name) for name in settings.inference_llm_models))
    events = ModelEventsHandler(repo)

    async def on_model_changed(event: registry_pb2.ModelChanged | None, record: Record) -> None:
        await events.on_model_changed(event, record)
        if event is not None:
            llms.reconcile_soon(event.model_name)  # an engine start takes a while: not on the consumer

    # Every replica must see every model event: a group of its own, starting from now.
    rt.consumer([rt.namer.model_events()], events.decode, on_model_changed,
                group=f"{rt.namer.group('inference')}.{uuid.uuid4().hex[:8]}", auto_offset_reset="latest")
    server, port = await start_server(
        [lambda s: service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, s)],
        settings.inference_port, [SERVICE], health_servicer=health_servicer, serving=False, reflect=[SERVICE],
        host=settings.bind_host, auth=auth)
    http, http_port = (await _serve_http(openai_api.app(generator, admission),
                                         settings.inference_http_host or settings.bind_host,
                                         settings.inference_http_port, settings) if generator else (None, None))
    logging.getLogger(__name__).info("serving", extra={"grpc_port": port, "http_port": http_port})

    # separate loops: an LLM engine's start (tens of seconds) must not delay the scoring models' reloads
    reconciler = asyncio.create_task(_forever(repo.reconcile, settings.inference_models,
                                              settings.inference_reconcile_s))
    llm_reconciler = asyncio.create_task(_forever(llms.reconcile, settings.inference_llm_models,
                                                  settings.inference_reconcile_s))

    async def close() -> None:
        for task in (reconciler, llm_reconciler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _stop_http(http)
        await server.stop(5)  # lets in-flight calls finish (and queue their rows)
        # the engines before the rest: a service killed after its drain time would leave them running
        await llms.close()
        await generation_log.close()
        await scorer.close()  # shadow copies finish and log
        await prediction_log.close()  # publishes what is queued; the publisher stops after the closers
        await repo.close()
        executor.shutdown(wait=False, cancel_futures=True)

    rt.closers.append(close)
    await serve_until(rt, stop)


SERVICE = "inference.GRPCInferenceService"


class _Server(uvicorn.Server):
    """uvicorn inside the service's own event loop: signals stay the runtime's (it drains on SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Gen[None, None, None]:
        yield


def _limiter(settings: Settings) -> RateLimiter:
    def limit(rps: float, burst: float) -> Limit:
        return Limit(rps, burst if burst > 0 else max(1.0, 2 * rps))

    return RateLimiter(limit(settings.inference_rate_limit_rps, settings.inference_rate_limit_burst),
                       {client: limit(float(o.get("rps", settings.inference_rate_limit_rps)), float(o.get("burst", 0)))
                        for client, o in settings.inference_rate_limit_clients.items()})


async def _serve_http(app: object, host: str, port: int,
                      settings: Settings) -> tuple[tuple[_Server, asyncio.Task[None]], int]:
    """Serve ``app`` as a task of this loop on ``host:port`` (0: a free port); return it and the bound port.
    In mode ``mtls`` it is HTTPS and requires a client certificate from the CA, like the gRPC port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    tls: dict[str, Any] = {}
    if settings.auth_mode == "mtls":
        tls = {"ssl_certfile": str(settings.auth_tls_cert), "ssl_keyfile": str(settings.auth_tls_key),
               "ssl_ca_certs": str(settings.auth_tls_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",  # type: ignore[arg-type]
                            timeout_graceful_shutdown=5, **tls)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    return (server, task), sock.getsockname()[1]


async def _llm_side(settings: Settings, rt: Runtime, objects: ObjectStore,
                    trust: TrustStore) -> tuple[LlmRepository, GenerationLog, Generator | None]:
    """The LLM engines, the generation log and the generate use case (None when no LLM is configured)."""
    llms = LlmRepository(settings.inference_llm_models, RegistryClient(settings.registry_addr), objects, trust,
                         rt.publisher, rt.namer, workdir=_workdir(settings.inference_llm_workdir),
                         configs={name: _engine_config(c) for name, c in settings.inference_llm_engine.items()},
                         start_timeout_s=settings.inference_llm_start_timeout_s)
    generation_log = GenerationLog(rt.publisher, rt.namer, capacity=settings.generation_log_capacity)
    generation_log.start()
    if not settings.inference_llm_models:
        return llms, generation_log, None
    # Presidio's recognizers take a moment to build: off the loop, and only when an LLM is served
    guardrails = await asyncio.to_thread(Guardrails, settings.inference_guardrails)
    generator = Generator(llms, RegistryClient(settings.registry_addr), generation_log,
                          PriceTable.from_config(settings.inference_llm_prices), guardrails,
                          max_prompt_chars=settings.inference_llm_max_prompt_chars,
                          holdback_chars=settings.inference_llm_stream_holdback_chars)
    return llms, generation_log, generator


async def _forever(reconcile: Callable[[str], Awaitable[None]], names: list[str], every_s: float) -> None:
    """Re-resolve every model's aliases now and then, in case a model event was missed."""
    while True:
        for name in names:
            await reconcile(name)
        await asyncio.sleep(every_s)


async def _stop_http(http: tuple[_Server, asyncio.Task[None]] | None) -> None:
    if http is not None:
        http[0].should_exit = True  # finishes the responses in flight, then returns
        with contextlib.suppress(Exception):
            await asyncio.wait_for(http[1], 6)


def _engine_config(values: dict[str, Any]) -> EngineConfig:
    extra = values.get("extra_args", ())
    return EngineConfig(**{**values, "extra_args": tuple(extra) if isinstance(extra, list | tuple) else ()})


def _workdir(configured: str) -> Path:
    return Path(configured) if configured else Path(tempfile.mkdtemp(prefix="loopline-llm-"))


def run() -> None:
    runtime.run(main)
