"""Training references of served versions, read from their signed artifacts (cached per version)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import grpc
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.objstore import ObjectStore
from loopline_core.signing import TrustStore
from loopline_ml.store import fetch_verified


class References:
    def __init__(self, registry_addr: str, objects: ObjectStore, trust: TrustStore) -> None:
        self._channel = grpc.aio.insecure_channel(registry_addr)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._objects = objects
        self._trust = trust
        self._cache: dict[tuple[str, int], tuple[dict[str, Any], list[str]]] = {}

    async def close(self) -> None:
        await self._channel.close()

    async def get(self, model: str, version: int) -> tuple[dict[str, Any], list[str]]:
        if (model, version) not in self._cache:
            try:
                resp = await self._registry.GetModelVersion(
                    registry_pb2.GetModelVersionRequest(model_name=model, version=version), timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise LooplineError(ErrorKind.UNAVAILABLE, f"registry: {exc.details()}") from exc
            v = resp.version
            with tempfile.TemporaryDirectory(prefix="loopline-ref-") as tmp:
                loaded = await fetch_verified(self._objects, self._trust, v.artifact_uri, v.signature_uri,
                                              v.signer_key_id, into=Path(tmp))
                ref = json.loads((Path(tmp) / "model" / "reference.json").read_text())
            self._cache[(model, version)] = (ref, loaded.config.feature_names)
        return self._cache[(model, version)]
