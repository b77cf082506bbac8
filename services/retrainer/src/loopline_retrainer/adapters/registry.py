"""The retrainer's registry client."""

from __future__ import annotations

import grpc
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.telemetry import inject_metadata


class RegistryClient:
    def __init__(self, addr: str) -> None:
        self._channel = grpc.aio.insecure_channel(addr)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def champion(self, model: str) -> int | None:
        try:
            resp = await self._stub.ResolveAlias(registry_pb2.ResolveAliasRequest(model_name=model, alias="champion"),
                                                 metadata=inject_metadata(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise LooplineError(ErrorKind.UNAVAILABLE, f"registry: {exc.details()}") from exc
        return int(resp.version.version)

    async def set_alias(self, model: str, alias: str, version: int, reason: str) -> None:
        try:
            await self._stub.SetAlias(registry_pb2.SetAliasRequest(model_name=model, alias=alias, version=version,
                                                                   reason=reason, actor="retrainer"),
                                      metadata=inject_metadata(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            kind = ErrorKind.NOT_FOUND if exc.code() == grpc.StatusCode.NOT_FOUND else ErrorKind.UNAVAILABLE
            raise LooplineError(kind, f"registry: {exc.details()}") from exc
