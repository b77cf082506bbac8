"""RegistryService: thin gRPC handlers over the store; every change is reported as ModelChanged.

The store writes each event into the registry's outbox in the same transaction as the change, and
the outbox relay publishes it on ``loopline.models.events``: a change is never committed without
its event, and a failed publish is retried by the relay, not lost. A handler waits (briefly) for
the relay after a change, so that normally the event is out when the caller gets its answer; when
the broker is down the call still succeeds and the event follows once it is back.
"""

from __future__ import annotations

import grpc
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline_core.outbox import Relay

from loopline_registry.adapters.convert import from_proto, to_proto
from loopline_registry.adapters.store import RegistryStore
from loopline_registry.domain.models import check_alias, check_model_name


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, relay: Relay, flush_s: float) -> None:
        self.store = store
        self.relay = relay
        self.flush_s = flush_s

    async def RegisterModelVersion(self, request: pb.RegisterModelVersionRequest,  # noqa: N802
                                   context: grpc.aio.ServicerContext) -> pb.RegisterModelVersionResponse:
        """Register a version; emits REGISTERED on ``loopline.models.events`` the first time (via the outbox)."""
        v = from_proto(request.version)
        v.check()
        stored, created = await self.store.register(v)
        if created:
            await self.relay.flush(self.flush_s)
        return pb.RegisterModelVersionResponse(version=to_proto(stored))

    async def GetModelVersion(self, request: pb.GetModelVersionRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> pb.GetModelVersionResponse:
        v = await self.store.get(check_model_name(request.model_name), request.version)
        return pb.GetModelVersionResponse(version=to_proto(v))

    async def ListModelVersions(self, request: pb.ListModelVersionsRequest,  # noqa: N802
                                context: grpc.aio.ServicerContext) -> pb.ListModelVersionsResponse:
        versions = await self.store.list(check_model_name(request.model_name))
        return pb.ListModelVersionsResponse(versions=[to_proto(v) for v in versions])

    async def SetAlias(self, request: pb.SetAliasRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> pb.SetAliasResponse:
        """Move an alias (audited); emits ALIAS_SET on ``loopline.models.events`` (via the outbox)."""
        name, alias = check_model_name(request.model_name), check_alias(request.alias)
        v, previous = await self.store.set_alias(name, alias, request.version, request.reason or "unspecified",
                                                 request.actor or "unknown")
        await self.relay.flush(self.flush_s)
        return pb.SetAliasResponse(version=to_proto(v), previous_version=previous)

    async def ResolveAlias(self, request: pb.ResolveAliasRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> pb.ResolveAliasResponse:
        v = await self.store.resolve(check_model_name(request.model_name), check_alias(request.alias))
        return pb.ResolveAliasResponse(version=to_proto(v))
