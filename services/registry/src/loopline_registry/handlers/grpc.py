"""RegistryService: thin gRPC handlers over the store; every change is published as ModelChanged."""

from __future__ import annotations

import grpc
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Publisher, TopicNamer

from loopline_registry.adapters.convert import from_proto, to_proto
from loopline_registry.adapters.store import RegistryStore
from loopline_registry.domain.models import check_alias, check_model_name


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, publisher: Publisher, namer: TopicNamer) -> None:
        self.store = store
        self.publisher = publisher
        self.namer = namer

    async def _publish(self, event: pb.ModelChanged) -> None:
        await self.publisher.publish(self.namer.model_events(), event.SerializeToString(), key=event.model_name,
                                     message_type="loopline.registry.v1.ModelChanged")

    async def RegisterModelVersion(self, request: pb.RegisterModelVersionRequest,  # noqa: N802
                                   context: grpc.aio.ServicerContext) -> pb.RegisterModelVersionResponse:
        """Register a version; publishes REGISTERED on ``loopline.models.events`` the first time."""
        v = from_proto(request.version)
        v.check()
        stored, created = await self.store.register(v)
        if created:
            await self._publish(pb.ModelChanged(
                metadata=metadata("registry", derived_id("registered", stored.model_name, str(stored.version))),
                kind=pb.MODEL_EVENT_KIND_REGISTERED, model_name=stored.model_name, version=stored.version))
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
        """Move an alias (audited); publishes ALIAS_SET on ``loopline.models.events``."""
        name, alias = check_model_name(request.model_name), check_alias(request.alias)
        v, previous = await self.store.set_alias(name, alias, request.version, request.reason or "unspecified",
                                                 request.actor or "unknown")
        await self._publish(pb.ModelChanged(metadata=metadata("registry"), kind=pb.MODEL_EVENT_KIND_ALIAS_SET,
                                            model_name=name, version=v.version, alias=alias,
                                            previous_version=previous, reason=request.reason))
        return pb.SetAliasResponse(version=to_proto(v), previous_version=previous)

    async def ResolveAlias(self, request: pb.ResolveAliasRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> pb.ResolveAliasResponse:
        v = await self.store.resolve(check_model_name(request.model_name), check_alias(request.alias))
        return pb.ResolveAliasResponse(version=to_proto(v))
