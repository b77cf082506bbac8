"""The loaded models: resolve the champion, verify its signature, load, swap atomically."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core.errors import LooplineError
from loopline_core.objstore import ObjectStore
from loopline_core.signing import TrustStore
from loopline_core.telemetry import inject_metadata
from loopline_ml.artifact import ScoringModel
from loopline_ml.store import fetch_verified

from loopline_inference.metrics import LOADS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    name: str
    version: int
    model: ScoringModel


class Repository:
    """Name -> the served version. A reload replaces the whole entry at once, so a request that
    already holds the old entry finishes on it and none is dropped."""

    def __init__(self, names: list[str], registry_addr: str, objects: ObjectStore, trust: TrustStore) -> None:
        self.names = names
        self._served: dict[str, Served] = {}
        self._channel = grpc.aio.insecure_channel(registry_addr)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._objects = objects
        self._trust = trust

    def get(self, name: str) -> Served | None:
        return self._served.get(name)

    @property
    def ready(self) -> bool:
        return all(n in self._served for n in self.names)

    async def close(self) -> None:
        await self._channel.close()

    async def reconcile(self, name: str) -> None:
        """Serve ``name``'s current champion; keep the old model if the new one fails verification."""
        try:
            resp = await self._registry.ResolveAlias(
                registry_pb2.ResolveAliasRequest(model_name=name, alias="champion"), metadata=inject_metadata(),
                timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("registry unreachable; keeping the current model", extra={"error": exc.details()})
            return
        v = resp.version
        current = self._served.get(name)
        if current is not None and current.version == v.version:
            return
        try:
            model = await fetch_verified(self._objects, self._trust, v.artifact_uri, v.signature_uri, v.signer_key_id)
        except LooplineError as exc:
            LOADS.labels(name, "refused").inc()
            log.error("refused to load model: keeping the one already served",  # noqa: TRY400 - a verdict, not a crash
                      extra={"model": name, "version": v.version, "reason": exc.message,
                             "serving": current.version if current else None})
            return
        self._served[name] = Served(name, v.version, model)
        LOADS.labels(name, "loaded").inc()
        log.info("serving new version", extra={"model": name, "version": v.version,
                                               "previous": current.version if current else None})
