"""The loaded models: per model its champion and, during a rollout, its challenger; each verified
before it is loaded, loaded off the event loop, and swapped in whole."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loopline.registry.v1 import registry_pb2
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_core.refusals import report_refusal
from loopline_core.registry import RegistryClient
from loopline_core.signing import TrustStore
from loopline_ml.artifact import ScoringModel
from loopline_ml.store import fetch_verified

from loopline_inference.adapters.backends import Backend
from loopline_inference.domain.batching import Batcher, Stats
from loopline_inference.domain.routing import Role, RolloutPolicy
from loopline_inference.domain.variants import VARIANTS, VariantPolicy
from loopline_inference.metrics import LOADS

log = logging.getLogger(__name__)

VariantLoader = Callable[[registry_pb2.ModelVersion, ScoringModel], Awaitable[dict[str, Backend]]]
BatcherFactory = Callable[[Backend, Stats], Batcher]

REFUSED_RETRY_S = 60.0
"""A refused artifact is fetched and verified again only after this long (a key may have been trusted
meanwhile); the alert is raised once per version."""
RETIRE_AFTER_S = 10.0
"""A replaced version's batchers close this long after the swap: calls that already hold it finish."""


@dataclass
class Arm:
    """One version serving in one role, with its variants, each behind its own batcher."""

    name: str
    version: int
    role: Role
    model: ScoringModel
    feature_view: str
    batchers: dict[str, Batcher]
    backends: dict[str, Backend]
    stats: Stats

    @property
    def variants(self) -> frozenset[str]:
        return frozenset(self.batchers)

    async def close(self) -> None:
        for b in self.batchers.values():
            await b.close()
        for backend in self.backends.values():
            await backend.close()


@dataclass
class Serving:
    """What one model serves now; replaced whole on every change (readers never see half an update)."""

    champion: Arm
    challenger: Arm | None = None
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    variants: VariantPolicy = field(default_factory=VariantPolicy)

    def arms(self) -> list[Arm]:
        return [self.champion, *([self.challenger] if self.challenger else [])]


def rollout_policy(m: registry_pb2.Model) -> RolloutPolicy:
    r = m.rollout
    mode = r.mode if r.mode in ("canary", "shadow") else "direct"
    return RolloutPolicy(mode, r.canary_share, "request" if r.sticky_by == "request" else "entity")  # type: ignore[arg-type]


def variant_policy(m: registry_pb2.Model) -> VariantPolicy:
    p = m.variants
    return VariantPolicy(p.default_variant if p.default_variant in VARIANTS else "torch",
                         p.fast_variant if p.fast_variant in VARIANTS else "", p.fast_budget_ms)


class Repository:
    def __init__(self, names: list[str], registry: RegistryClient, objects: ObjectStore, trust: TrustStore,
                 publisher: Publisher, namer: TopicNamer, *, load_variants: VariantLoader,
                 batcher: BatcherFactory, on_ready: Callable[[bool], Awaitable[None]] | None = None) -> None:
        self.names = names
        self._serving: dict[str, Serving] = {}
        self._unloaded: set[str] = set()
        self._registry = registry
        self._objects = objects
        self._trust = trust
        self._publisher = publisher
        self._namer = namer
        self._load_variants = load_variants
        self._batcher = batcher
        self._on_ready = on_ready
        self._refused: dict[tuple[str, int], float] = {}
        self._locks: dict[str, asyncio.Lock] = {n: asyncio.Lock() for n in names}
        self._retiring: set[asyncio.Task[None]] = set()
        self._was_ready = False

    def get(self, name: str) -> Serving | None:
        return self._serving.get(name)

    def unloaded(self, name: str) -> bool:
        return name in self._unloaded

    def queue_depths(self) -> list[tuple[str, str, str, int]]:
        """(model, role, variant, rows waiting) per batcher served now. Called from the metrics server's
        thread: it reads a copy of the served entries (each entry is replaced whole, never changed)."""
        return [(arm.name, arm.role, variant, b.queued_rows)
                for s in list(self._serving.values()) for arm in s.arms() for variant, b in list(arm.batchers.items())]

    @property
    def ready(self) -> bool:
        return all(n in self._serving for n in self.names)

    async def close(self) -> None:
        for s in list(self._serving.values()):
            for arm in s.arms():
                await arm.close()
        self._serving.clear()
        for t in list(self._retiring):
            t.cancel()
        await self._registry.close()

    # ---- the repository RPCs ---------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Serve ``name`` again (after an unload) and resolve its aliases now."""
        self._unloaded.discard(name)
        await self.reconcile(name)

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` until it is loaded again (calls in flight finish)."""
        async with self._locks[name]:
            self._unloaded.add(name)
            old = self._serving.pop(name, None)
            if old is not None:
                for arm in old.arms():
                    self._retire(arm)
        await self._ready_changed()

    # ---- reconciling with the registry -----------------------------------------------------------

    async def reconcile(self, name: str) -> None:
        """Serve ``name``'s champion, and its challenger while the rollout policy asks for one. A version
        that is retired or fails verification is not loaded (a refused artifact also raises an
        ArtifactRefused alert), and whatever was served keeps serving."""
        if name in self._unloaded:
            return
        async with self._locks[name]:
            try:
                model = await self._model(name)
                champion = await self._registry.champion(name)
                rollout = rollout_policy(model)
                challenger = (await self._registry.resolve(name, "challenger")
                              if rollout.mode != "direct" else None)
            except LooplineError as exc:
                log.warning("registry unreachable; keeping the current models", extra={"error": exc.message})
                return
            current = self._serving.get(name)
            champ_arm = await self._arm(champion, "champion", current.champion if current else None)
            if champ_arm is None:
                return
            chall_arm = None
            if challenger is not None and challenger.version != champ_arm.version:
                chall_arm = await self._arm(challenger, "challenger", current.challenger if current else None)
            new = Serving(champ_arm, chall_arm, rollout, variant_policy(model))
            self._serving[name] = new
            if current is not None:
                kept = {id(a) for a in new.arms()}
                for arm in current.arms():
                    if id(arm) not in kept:
                        self._retire(arm)
        await self._ready_changed()

    async def _model(self, name: str) -> registry_pb2.Model:
        """The model's record (its policies); a model registered without a declaration has the defaults."""
        try:
            return await self._registry.model(name)
        except LooplineError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return registry_pb2.Model(name=name)
            raise

    async def _arm(self, v: registry_pb2.ModelVersion | None, role: Role, current: Arm | None) -> Arm | None:
        """The arm serving ``v`` in ``role``: the current one when it already serves ``v``; a newly loaded
        one; else, when ``v`` cannot be served, the current one (which may be None)."""
        if v is None:
            return current if role == "champion" else None
        if current is not None and current.version == v.version:
            return current
        if not self._wanted(v, current):
            return current if role == "champion" else None
        try:
            model = await fetch_verified(self._objects, self._trust, v.artifact_uri, v.signature_uri,
                                         v.signer_key_id)
        except LooplineError as exc:
            if exc.kind is not ErrorKind.FAILED_PRECONDITION:  # the store is down, say: try again next round
                log.warning("could not fetch the new version; keeping the current model",
                            extra={"model": v.model_name, "version": v.version, "error": exc.message})
            else:
                await self._refuse(v, exc, serving=current.version if current else None)
            return current if role == "champion" else None
        self._refused.pop((v.model_name, v.version), None)
        backends = await self._load_variants(v, model)
        stats = Stats()
        batchers = {variant: self._batcher(backend, stats) for variant, backend in backends.items()}
        for b in batchers.values():
            b.start()
        LOADS.labels(v.model_name, "loaded").inc()
        log.info("serving new version", extra={"model": v.model_name, "version": v.version, "role": role,
                                               "variants": sorted(batchers),
                                               "previous": current.version if current else None})
        return Arm(v.model_name, v.version, role, model, v.run.feature_view, batchers, backends, stats)

    def _retire(self, arm: Arm) -> None:
        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER_S)
            await arm.close()

        task = asyncio.create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _ready_changed(self) -> None:
        ready = self.ready
        if ready != self._was_ready:
            self._was_ready = ready
            if self._on_ready is not None:
                with contextlib.suppress(Exception):
                    await self._on_ready(ready)

    def _wanted(self, v: registry_pb2.ModelVersion, current: Arm | None) -> bool:
        """Whether to fetch ``v``: not when it is retired, or refused a moment ago."""
        if v.stage == registry_pb2.STAGE_RETIRED:  # the registry never lets one hold an alias; never trust that alone
            LOADS.labels(v.model_name, "retired").inc()
            log.error("refused to load a retired version: keeping the one already served",
                      extra={"model": v.model_name, "version": v.version,
                             "serving": current.version if current else None})
            return False
        refused_at = self._refused.get((v.model_name, v.version))
        return refused_at is None or time.monotonic() - refused_at >= REFUSED_RETRY_S

    async def _refuse(self, v: registry_pb2.ModelVersion, exc: LooplineError, *, serving: int | None) -> None:
        first = (v.model_name, v.version) not in self._refused
        self._refused[(v.model_name, v.version)] = time.monotonic()
        LOADS.labels(v.model_name, "refused").inc()
        log.error("refused to load model: keeping the one already served",
                  extra={"model": v.model_name, "version": v.version, "reason": exc.message, "serving": serving})
        if first:
            await report_refusal(self._publisher, self._namer, service="inference", model=v.model_name,
                                 version=v.version, artifact_uri=v.artifact_uri, signer_key_id=v.signer_key_id,
                                 error=exc)
