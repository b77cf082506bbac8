"""Reference profiles of served versions, read from their signed artifacts (cached per version).

A version whose artifact carries no profile (one trained before profiles existed) is not ready:
its profile is None, remembered, so the monitor raises one alert for it rather than retrying.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_core.refusals import report_refusal
from loopline_core.registry import RegistryClient
from loopline_core.signing import TrustStore
from loopline_ml.profile import Profile, load_profile
from loopline_ml.store import fetch_verified


class References:
    def __init__(self, registry: RegistryClient, objects: ObjectStore, trust: TrustStore, publisher: Publisher,
                 namer: TopicNamer) -> None:
        self._registry = registry
        self._objects = objects
        self._trust = trust
        self._publisher = publisher
        self._namer = namer
        self._cache: dict[tuple[str, int], tuple[Profile | None, list[str]]] = {}
        self._refused: set[tuple[str, int]] = set()

    async def close(self) -> None:
        await self._registry.close()

    async def get(self, model: str, version: int) -> tuple[Profile | None, list[str]]:
        """The version's reference profile (None: its artifact has none) and feature names; a version
        the registry does not know is NOT_FOUND (permanent), an artifact that fails verification
        FAILED_PRECONDITION and, the first time, an ArtifactRefused alert."""
        if (model, version) not in self._cache:
            v = await self._registry.get(model, version)
            with tempfile.TemporaryDirectory(prefix="loopline-ref-") as tmp:
                try:
                    loaded = await fetch_verified(self._objects, self._trust, v.artifact_uri, v.signature_uri,
                                                  v.signer_key_id, into=Path(tmp))
                except LooplineError as exc:
                    if exc.kind is ErrorKind.FAILED_PRECONDITION and (model, version) not in self._refused:
                        self._refused.add((model, version))
                        await report_refusal(self._publisher, self._namer, service="monitor", model=model,
                                             version=version, artifact_uri=v.artifact_uri,
                                             signer_key_id=v.signer_key_id, error=exc)
                    raise
                path = Path(tmp) / "model" / "reference.json"
                ref = json.loads(path.read_text()) if path.is_file() else {}
            profile = load_profile(ref) if isinstance(ref, dict) and ref.get("version") == 2 else None
            self._cache[(model, version)] = (profile, loaded.config.feature_names)
        return self._cache[(model, version)]
