"""Outbound gRPC clients of the trainer (registry, feature service)."""

from __future__ import annotations

import grpc
from loopline.feature.v1 import feature_pb2, feature_pb2_grpc
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.telemetry import inject_metadata

_KINDS = {grpc.StatusCode.NOT_FOUND: ErrorKind.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_ARGUMENT,
          grpc.StatusCode.FAILED_PRECONDITION: ErrorKind.FAILED_PRECONDITION}


def as_error(exc: grpc.aio.AioRpcError) -> LooplineError:
    """Map a peer's status back to an error kind (unknown codes are transient: UNAVAILABLE)."""
    return LooplineError(_KINDS.get(exc.code(), ErrorKind.UNAVAILABLE), exc.details() or str(exc.code()))


class Clients:
    def __init__(self, registry_addr: str, feature_addr: str) -> None:
        self._registry_channel = grpc.aio.insecure_channel(registry_addr)
        self._feature_channel = grpc.aio.insecure_channel(feature_addr)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._registry_channel)
        self.feature = feature_pb2_grpc.FeatureServiceStub(self._feature_channel)

    async def close(self) -> None:
        await self._registry_channel.close()
        await self._feature_channel.close()

    async def training_set(self, dataset: str) -> feature_pb2.BuildTrainingSetResponse:
        try:
            resp: feature_pb2.BuildTrainingSetResponse = await self.feature.BuildTrainingSet(
                feature_pb2.BuildTrainingSetRequest(feature_view=dataset, dataset=dataset),
                metadata=inject_metadata(), timeout=120)
        except grpc.aio.AioRpcError as exc:
            raise as_error(exc) from exc
        return resp

    async def champion(self, model_name: str) -> registry_pb2.ModelVersion | None:
        try:
            resp = await self.registry.ResolveAlias(
                registry_pb2.ResolveAliasRequest(model_name=model_name, alias="champion"),
                metadata=inject_metadata(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise as_error(exc) from exc
        version: registry_pb2.ModelVersion = resp.version
        return version

    async def by_run(self, model_name: str, run_id: str) -> registry_pb2.ModelVersion | None:
        try:
            resp = await self.registry.ListModelVersions(registry_pb2.ListModelVersionsRequest(model_name=model_name),
                                                         metadata=inject_metadata(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise as_error(exc) from exc
        return next((v for v in resp.versions if v.run_id == run_id), None)

    async def register(self, version: registry_pb2.ModelVersion) -> registry_pb2.ModelVersion:
        try:
            resp = await self.registry.RegisterModelVersion(
                registry_pb2.RegisterModelVersionRequest(version=version), metadata=inject_metadata(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise as_error(exc) from exc
        stored: registry_pb2.ModelVersion = resp.version
        return stored
