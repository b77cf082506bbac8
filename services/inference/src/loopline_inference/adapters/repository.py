"""The loaded models: resolve the champion, verify its signature, load, swap atomically."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from loopline.registry.v1 import registry_pb2
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_core.refusals import report_refusal
from loopline_core.registry import RegistryClient
from loopline_core.signing import TrustStore
from loopline_ml.artifact import ScoringModel
from loopline_ml.store import fetch_verified

from loopline_inference.metrics import LOADS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    name: str
    version: int
    model: ScoringModel


REFUSED_RETRY_S = 60.0
"""A refused artifact is fetched and verified again only after this long (a key may have been trusted
meanwhile); the alert is raised once per version."""


class Repository:
    """Name -> the served version. A reload replaces the whole entry at once, so a request that
    already holds the old entry finishes on it and none is dropped."""

    def __init__(self, names: list[str], registry: RegistryClient, objects: ObjectStore, trust: TrustStore,
                 publisher: Publisher, namer: TopicNamer) -> None:
        self.names = names
        self._served: dict[str, Served] = {}
        self._registry = registry
        self._objects = objects
        self._trust = trust
        self._publisher = publisher
        self._namer = namer
        self._refused: dict[tuple[str, int], float] = {}

    def get(self, name: str) -> Served | None:
        return self._served.get(name)

    @property
    def ready(self) -> bool:
        return all(n in self._served for n in self.names)

    async def close(self) -> None:
        await self._registry.close()

    async def reconcile(self, name: str) -> None:
        """Serve ``name``'s current champion; keep the old model if the new one is retired or fails
        verification (a refused artifact also raises an ArtifactRefused alert)."""
        try:
            v = await self._registry.champion(name)
        except LooplineError as exc:
            log.warning("registry unreachable; keeping the current model", extra={"error": exc.message})
            return
        if v is None:
            return
        current = self._served.get(name)
        if not self._wanted(v, current):
            return
        refused_at = self._refused.get((name, v.version))
        try:
            model = await fetch_verified(self._objects, self._trust, v.artifact_uri, v.signature_uri, v.signer_key_id)
        except LooplineError as exc:
            if exc.kind is not ErrorKind.FAILED_PRECONDITION:  # the store is down, say: try again next round
                log.warning("could not fetch the new version; keeping the current model",
                            extra={"model": name, "version": v.version, "error": exc.message})
                return
            await self._refuse(v, exc, first=refused_at is None, serving=current.version if current else None)
            return
        self._refused.pop((name, v.version), None)
        self._served[name] = Served(name, v.version, model)
        LOADS.labels(name, "loaded").inc()
        log.info("serving new version", extra={"model": name, "version": v.version,
                                               "previous": current.version if current else None})

    def _wanted(self, v: registry_pb2.ModelVersion, current: Served | None) -> bool:
        """Whether to fetch ``v``: not when it is already served, retired, or refused a moment ago."""
        if current is not None and current.version == v.version:
            return False
        if v.stage == registry_pb2.STAGE_RETIRED:  # the registry never lets one hold an alias; never trust that alone
            LOADS.labels(v.model_name, "retired").inc()
            log.error("refused to load a retired version: keeping the one already served",
                      extra={"model": v.model_name, "version": v.version,
                             "serving": current.version if current else None})
            return False
        refused_at = self._refused.get((v.model_name, v.version))
        return refused_at is None or time.monotonic() - refused_at >= REFUSED_RETRY_S

    async def _refuse(self, v: registry_pb2.ModelVersion, exc: LooplineError, *, first: bool,
                      serving: int | None) -> None:
        self._refused[(v.model_name, v.version)] = time.monotonic()
        LOADS.labels(v.model_name, "refused").inc()
        log.error("refused to load model: keeping the one already served",
                  extra={"model": v.model_name, "version": v.version, "reason": exc.message, "serving": serving})
        if first:
            await report_refusal(self._publisher, self._namer, service="inference", model=v.model_name,
                                 version=v.version, artifact_uri=v.artifact_uri, signer_key_id=v.signer_key_id,
                                 error=exc)
