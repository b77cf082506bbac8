"""The LLM repository: per model named in ``LOOPLINE_INFERENCE_LLM_MODELS``, its ``champion`` version
served by a vLLM engine (a managed child process, see :mod:`loopline_llm.engine`).

Verify-before-load as for every model: the signed directory is fetched and verified before an engine is
pointed at it; a version that is not an ``llm`` artifact, is unsigned or tampered is refused (with an
ArtifactRefused alert) and whatever served keeps serving. A new version's engine is started beside the
old one and swapped in once it answers; the old one stops a little later (streams in flight finish). An
engine that fails to start leaves the model not ready (or on its previous version); the rest of
inference is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from loopline.registry.v1 import registry_pb2
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_core.refusals import report_refusal
from loopline_core.registry import RegistryClient
from loopline_core.signing import TrustStore
from loopline_llm.client import EngineClient
from loopline_llm.engine import EngineConfig, VllmServer
from loopline_ml.store import fetch_verified_dir

from loopline_inference.metrics import LLM_ENGINE_STARTS, LLM_READY

log = logging.getLogger(__name__)

RETRY_AFTER_S = 300.0
"""A version refused or whose engine failed is tried again only after this long (each try of a broken
artifact costs an engine start: tens of seconds of CPU); a new version is tried at once."""
RETIRE_AFTER_S = 30.0
"""A replaced engine stops this long after the swap, so streams it is serving can finish."""
VARIANT = "vllm"


@dataclass
class ServedLlm:
    """One model version and the engine serving it."""

    name: str
    version: int
    server: VllmServer
    client: EngineClient
    variant: str = VARIANT

    async def close(self) -> None:
        await self.client.close()
        await self.server.stop(timeout_s=8.0)  # then SIGKILL: within the service's own drain time


class LlmRepository:
    def __init__(self, names: list[str], registry: RegistryClient, objects: ObjectStore, trust: TrustStore,
                 publisher: Publisher, namer: TopicNamer, *, workdir: Path,
                 configs: dict[str, EngineConfig] | None = None, start_timeout_s: float = 300.0) -> None:
        self.names = list(names)
        self._registry = registry
        self._objects = objects
        self._trust = trust
        self._publisher = publisher
        self._namer = namer
        self._workdir = workdir
        self._configs = configs or {}
        self._start_timeout_s = start_timeout_s
        self._serving: dict[str, ServedLlm] = {}
        self._failed: dict[tuple[str, int], float] = {}
        self._locks = {n: asyncio.Lock() for n in self.names}
        self._tasks: set[asyncio.Task[None]] = set()
        for n in self.names:
            LLM_READY.labels(n).set(0)

    def get(self, name: str) -> ServedLlm | None:
        served = self._serving.get(name)
        return served if served is not None and served.server.alive() else None

    def ready(self, name: str) -> bool:
        return self.get(name) is not None

    def served(self) -> list[tuple[str, int]]:
        return [(s.name, s.version) for s in list(self._serving.values()) if s.server.alive()]

    def reconcile_soon(self, name: str) -> None:
        """Reconcile in the background: an engine start takes tens of seconds, a consumer must not wait."""
        if name in self._locks:
            self._spawn(self.reconcile(name))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for s in list(self._serving.values()):
            await s.close()
        self._serving.clear()

    async def reconcile(self, name: str) -> None:
        """Serve ``name``'s champion; on any failure keep what serves (a dead engine is restarted)."""
        async with self._locks[name]:
            try:
                v = await self._registry.champion(name)
            except LooplineError as exc:
                log.warning("registry unreachable; keeping the current LLM", extra={"model": name,
                                                                                    "error": exc.message})
                return
            current = self._serving.get(name)
            if v is None or (current is not None and current.version == v.version and current.server.alive()):
                return
            if not self._wanted(v):
                return
            new = await self._start(v)
            if new is None:
                if current is not None and not current.server.alive():
                    LLM_READY.labels(name).set(0)
                return
            self._serving[name] = new
            LLM_READY.labels(name).set(1)
            log.info("serving new LLM version", extra={
                "model": name, "version": v.version, "engine_pid": new.server.pid, "engine_url": new.server.base_url,
                "previous": current.version if current else None})
            if current is not None:
                self._spawn(self._retire(current))

    def _wanted(self, v: registry_pb2.ModelVersion) -> bool:
        failed_at = self._failed.get((v.model_name, v.version))
        return failed_at is None or time.monotonic() - failed_at >= RETRY_AFTER_S

    async def _start(self, v: registry_pb2.ModelVersion) -> ServedLlm | None:
        name = v.model_name
        if v.flavor != "llm":
            await self._refuse(v, LooplineError(ErrorKind.FAILED_PRECONDITION,
                                                f"version {v.version} is a {v.flavor or 'torch'!r} artifact, "
                                                "not an LLM", {"refusal": "not_llm"}))
            return None
        target = self._workdir / name / f"v{v.version}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            model_dir = await fetch_verified_dir(self._objects, self._trust, v.artifact_uri, v.signature_uri,
                                                 v.signer_key_id, into=target)
        except LooplineError as exc:
            if exc.kind is ErrorKind.FAILED_PRECONDITION:
                await self._refuse(v, exc)
            else:  # the store is away: try again on the next round
                log.warning("could not fetch the LLM version", extra={"model": name, "version": v.version,
                                                                      "error": exc.message})
            return None
        server = VllmServer(model_dir, name, self._configs.get(name, EngineConfig()), target / "engine.log")
        log.info("starting the LLM engine", extra={"model": name, "version": v.version})
        try:
            await server.start(self._start_timeout_s)
        except asyncio.CancelledError:  # shutting down mid-start: the child must not outlive the service
            await server.stop(timeout_s=8.0)
            raise
        except LooplineError as exc:
            self._failed[(name, v.version)] = time.monotonic()
            LLM_ENGINE_STARTS.labels(name, "failed").inc()
            log.error("the LLM engine failed to start; the model is not ready",  # noqa: TRY400 - a verdict
                      extra={"model": name, "version": v.version, "error": exc.message[-800:]})
            await server.stop()
            return None
        self._failed.pop((name, v.version), None)
        LLM_ENGINE_STARTS.labels(name, "started").inc()
        return ServedLlm(name, v.version, server, EngineClient(server.base_url, name))

    async def _refuse(self, v: registry_pb2.ModelVersion, exc: LooplineError) -> None:
        first = (v.model_name, v.version) not in self._failed
        self._failed[(v.model_name, v.version)] = time.monotonic()
        LLM_ENGINE_STARTS.labels(v.model_name, "refused").inc()
        log.error("refused to load the LLM version: keeping what serves",
                  extra={"model": v.model_name, "version": v.version, "reason": exc.message})
        if first:
            await report_refusal(self._publisher, self._namer, service="inference", model=v.model_name,
                                 version=v.version, artifact_uri=v.artifact_uri, signer_key_id=v.signer_key_id,
                                 error=exc)

    async def _retire(self, served: ServedLlm) -> None:
        await asyncio.sleep(RETIRE_AFTER_S)
        await served.close()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
