"""GRPCInferenceService (Open Inference Protocol v2 as Triton speaks it, on Triton's own generated code).

Thin: each RPC reads the request, asks the scorer or the repository, and writes Triton's messages. A model
name the scoring repository does not serve goes to the LLM generate path (``oip_generate``) when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
from loopline_core.auth import ServerAuth
from loopline_core.errors import ErrorKind, LooplineError, invalid, not_found
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loopline_inference.adapters.repository import Arm, Repository, Serving
from loopline_inference.domain.batching import Duration
from loopline_inference.domain.ratelimit import Limit, RateLimiter
from loopline_inference.domain.tensors import INPUT_NAME, OUTPUT_NAME
from loopline_inference.handlers import oip_generate
from loopline_inference.handlers.generate import Generator
from loopline_inference.handlers.scoring import Scored, Scorer
from loopline_inference.metrics import IN_FLIGHT, RATE_LIMITED

SERVER_NAME = "loopline"
SERVER_VERSION = "0.2.0"
PLATFORM = "pytorch_libtorch"
EXTENSIONS = ["classification", "model_repository", "model_repository(unload_dependents)", "statistics",
              "parameters"]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _response(s: Scored, request_id: str) -> pb.ModelInferResponse:
    scores = s.scores.reshape(-1, 1).astype("<f4")
    return pb.ModelInferResponse(
        model_name=s.model, model_version=str(s.version), id=request_id,
        parameters={"variant": pb.InferParameter(string_param=s.variant),
                    "role": pb.InferParameter(string_param=s.role)},
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype="FP32",
                                                         shape=list(scores.shape))],
        raw_output_contents=[scores.tobytes()])


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _statistics(arm: Arm) -> pb.ModelStatistics:
    st = arm.stats
    return pb.ModelStatistics(
        name=arm.name, version=str(arm.version), last_inference=st.last_inference_ms,
        inference_count=st.inference_count, execution_count=st.execution_count,
        inference_stats=pb.InferStatistics(success=_duration(st.success), fail=_duration(st.fail),
                                           queue=_duration(st.queue), compute_input=pb.StatisticDuration(),
                                           compute_infer=_duration(st.compute_infer),
                                           compute_output=pb.StatisticDuration()),
        batch_stats=[pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(d),
                                             compute_input=pb.StatisticDuration(count=d.count),
                                             compute_output=pb.StatisticDuration(count=d.count))
                     for size, d in sorted(st.batches.items())])


@dataclass
class Admission:
    """Who is calling (the authentication interceptor has already refused strangers) and whether their
    rate limit lets this request in; ``in_flight`` counts the requests being served per model. Shared
    by the gRPC and the HTTP API, so a client's bucket is one whichever protocol it uses."""

    auth: ServerAuth = field(default_factory=lambda: ServerAuth("none"))
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(Limit(0, 0)))

    def admit(self, client: str) -> None:
        if not self.limiter.allow(client):
            RATE_LIMITED.labels(client).inc()
            raise LooplineError(ErrorKind.RESOURCE_EXHAUSTED, "rate limit exceeded; retry later")

    def admit_grpc(self, context: grpc.aio.ServicerContext) -> None:
        if self.limiter.unlimited:  # naming the caller means checking its token again: only when it matters
            return
        self.admit(self.auth.client_id(context))

    @contextlib.contextmanager
    def in_flight(self, model: str) -> Iterator[None]:
        gauge = IN_FLIGHT.labels(model)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repo: Repository, scorer: Scorer, *, max_batch: int, max_delay_ms: float,
                 generator: Generator | None = None, admission: Admission | None = None) -> None:
        self.repo = repo
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_delay_ms = max_delay_ms
        self.generator = generator
        self.admission = admission or Admission()

    def _model_label(self, name: str) -> str:
        """A served model's name, else ``unknown`` (a caller's typos must not grow the label set)."""
        return name if name in self.repo.names or self._llm(name) is not None else "unknown"

    def _llm(self, name: str) -> Generator | None:
        """The generator, when ``name`` is one of its LLMs (ready or not)."""
        g = self.generator
        return g if g is not None and name not in self.repo.names and g.knows(name) else None

    def _llm_version(self, llm: Generator, name: str, version: str) -> int:
        v = oip_generate.version_of(llm, name, version)
        if not v:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"the LLM {name!r} is not ready")
        return v

    def _serving(self, name: str) -> Serving:
        if name not in self.repo.names:
            raise not_found(f"unknown model {name!r}")
        if self.repo.unloaded(name):
            raise LooplineError(ErrorKind.UNAVAILABLE, f"model {name!r} is unloaded (RepositoryModelLoad serves it)")
        s = self.repo.get(name)
        if s is None:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"model {name!r} has no champion loaded yet")
        return s

    def _arm(self, name: str, version: str) -> Arm:
        s = self._serving(name)
        for arm in s.arms():
            if not version or version == str(arm.version):
                return arm
        raise not_found(f"model {name!r} version {version} is not loaded (serving "
                        f"{', '.join(str(a.version) for a in s.arms())})")

    # ---- health and metadata ---------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.repo.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> pb.ModelReadyResponse:
        if (llm := self._llm(request.name)) is not None:
            v = dict(llm.served()).get(request.name)
            return pb.ModelReadyResponse(ready=v is not None and request.version in ("", str(v)))
        s = None if self.repo.unloaded(request.name) else self.repo.get(request.name)
        ok = s is not None and (not request.version or any(request.version == str(a.version) for a in s.arms()))
        return pb.ModelReadyResponse(ready=ok)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        if (llm := self._llm(request.name)) is not None:
            return oip_generate.metadata(request.name, self._llm_version(llm, request.name, request.version))
        s = self._serving(request.name)
        arm = self._arm(request.name, request.version)
        n = arm.model.n_features
        return pb.ModelMetadataResponse(
            name=arm.name, versions=[str(a.version) for a in s.arms()] if not request.version else [str(arm.version)],
            platform=PLATFORM,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, n])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 1])])

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext  # noqa: N802
                          ) -> pb.ModelConfigResponse:
        if (llm := self._llm(request.name)) is not None:
            self._llm_version(llm, request.name, request.version)
            return oip_generate.config(request.name)
        arm = self._arm(request.name, request.version)
        # The batch is the tensors' own first dimension (max_batch_size 0, dims [-1, n]); requests are
        # still batched together by the server, as dynamic_batching says.
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=arm.name, platform=PLATFORM, max_batch_size=0,
            input=[mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, arm.model.n_features])],
            output=[mc.ModelOutput(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, 1])],
            dynamic_batching=mc.ModelDynamicBatching(
                preferred_batch_size=[self.max_batch],
                max_queue_delay_microseconds=int(self.max_delay_ms * 1000)),
            version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        if (llm := self._llm(request.name)) is not None:
            # an LLM's figures (tokens, TTFT, per-token latency, cost) are Prometheus metrics, not Triton's
            v = self._llm_version(llm, request.name, request.version)
            return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name=request.name, version=str(v))])
        if request.name:
            arms = [self._arm(request.name, request.version)]
        else:
            arms = [a for n in self.repo.names if (s := self.repo.get(n)) is not None for a in s.arms()]
        return pb.ModelStatisticsResponse(model_stats=[_statistics(a) for a in arms])

    # ---- the repository --------------------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        out = []
        for name in self.repo.names:
            s = self.repo.get(name)
            if self.repo.unloaded(name) or s is None:
                if not request.ready:
                    out.append(pb.RepositoryIndexResponse.ModelIndex(
                        name=name, state="UNAVAILABLE",
                        reason="unloaded" if self.repo.unloaded(name) else "no champion loaded yet"))
                continue
            out += [pb.RepositoryIndexResponse.ModelIndex(name=name, version=str(a.version), state="READY",
                                                          reason=a.role) for a in s.arms()]
        if self.generator is not None:
            out += [pb.RepositoryIndexResponse.ModelIndex(name=name, version=str(v), state="READY", reason="llm")
                    for name, v in self.generator.served()]
        return pb.RepositoryIndexResponse(models=out)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,  # noqa: N802
                                  context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        if request.model_name not in self.repo.names:
            raise not_found(f"unknown model {request.model_name!r} (this server serves {self.repo.names})")
        await self.repo.load(request.model_name)
        if self.repo.get(request.model_name) is None:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"model {request.model_name!r} has no loadable champion")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,  # noqa: N802
                                    context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        if request.model_name not in self.repo.names:
            raise not_found(f"unknown model {request.model_name!r}")
        await self.repo.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- inference -------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext  # noqa: N802
                         ) -> pb.ModelInferResponse:
        """Score a batch; each row is queued for ``loopline.predictions.<model>`` (published off the response path).

        An LLM answers the whole text at once (``oip_generate``); its generation goes to
        ``loopline.generations.<model>``. A client over its rate limit gets RESOURCE_EXHAUSTED."""
        self.admission.admit_grpc(context)
        with self.admission.in_flight(self._model_label(request.model_name)):
            if (llm := self._llm(request.model_name)) is not None:
                g = oip_generate.parse(request)
                if g.stream:
                    raise invalid("stream = true needs ModelStreamInfer")
                return await oip_generate.infer(llm, request, g)
            return await self._score(request, context)

    async def _score(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        serving = self._serving(request.model_name)
        if request.model_version:
            self._arm(request.model_name, request.model_version)
        scored = await self.scorer.score(serving, request, _deadline(context))
        return _response(scored, request.id)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request is answered on the stream as soon as it is scored (not necessarily in order: a
        response carries its request's id); a failed request is an ``error_message``, never the
        stream's end. An LLM request with ``stream`` true is answered piece by piece, its last response
        flagged ``triton_final_response``; the caller going away closes its generation in the engine.
        Each request counts against the caller's rate limit (over it: that request's ``error_message``
        says RESOURCE_EXHAUSTED)."""
        client = self.admission.auth.client_id(context)
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(req: pb.ModelInferRequest) -> None:
            try:
                self.admission.admit(client)
                with self.admission.in_flight(self._model_label(req.model_name)):
                    if (llm := self._llm(req.model_name)) is not None:
                        await generate(llm, req)
                        return
                    response = await self._score(req, context)
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except LooplineError as exc:
                await answers.put(pb.ModelStreamInferResponse(
                    error_message=f"{exc.kind.value}: {exc.message}",
                    infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id)))
            except Exception as exc:  # noqa: BLE001 - one request's failure must not end the stream
                await answers.put(pb.ModelStreamInferResponse(
                    error_message=f"INTERNAL: {type(exc).__name__}: {exc}",
                    infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id)))

        async def generate(llm: Generator, req: pb.ModelInferRequest) -> None:
            # A decoupled model's failure is its final response: the error carries the final flag.
            try:
                g = oip_generate.parse(req)
                if not g.stream:
                    await answers.put(pb.ModelStreamInferResponse(
                        infer_response=await oip_generate.infer(llm, req, g, final=True)))
                    return
                async with contextlib.aclosing(oip_generate.stream(llm, req, g)) as responses:
                    async for r in responses:
                        await answers.put(pb.ModelStreamInferResponse(infer_response=r))
            except LooplineError as exc:
                await answers.put(oip_generate.error_response(req, f"{exc.kind.value}: {exc.message}"))
            except Exception as exc:  # noqa: BLE001 - one request's failure must not end the stream
                await answers.put(oip_generate.error_response(req, f"INTERNAL: {type(exc).__name__}: {exc}"))

        async def read() -> None:
            try:
                async for req in request_iterator:
                    task = asyncio.create_task(one(req))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                while pending:
                    await asyncio.gather(*list(pending))
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for task in list(pending):
                task.cancel()
