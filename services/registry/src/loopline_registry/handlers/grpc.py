"""RegistryService: thin gRPC handlers over the stores; every change is reported as ModelChanged.

The stores write each event into the registry's outbox in the same transaction as the change, and
the outbox relay publishes it on ``loopline.models.events``: a change is never committed without
its event, and a failed publish is retried by the relay, not lost. A handler waits (briefly) for
the relay after a change, so that normally the event is out when the caller gets its answer; when
the broker is down the call still succeeds and the event follows once it is back.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline_core.errors import invalid
from loopline_core.outbox import Relay

from loopline_registry.adapters import convert
from loopline_registry.adapters.aliases import AliasStore, Move
from loopline_registry.adapters.prompts import PromptStore
from loopline_registry.adapters.store import RegistryStore
from loopline_registry.domain.models import actor_or_default, check_alias, check_model_name, reason_or_default
from loopline_registry.domain.prompts import check_prompt_alias, check_prompt_name

Ctx: TypeAlias = grpc.aio.ServicerContext


def _expected(request: pb.SetAliasRequest | pb.DeleteAliasRequest | pb.RollbackRequest) -> int | None:
    return request.expected_version if request.HasField("expected_version") else None


def _move(request: pb.SetAliasRequest | pb.DeleteAliasRequest | pb.RollbackRequest |
          pb.ApproveModelVersionRequest) -> Move:
    return Move(actor_or_default(request.actor), reason_or_default(request.reason))


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, aliases: AliasStore, prompts: PromptStore, relay: Relay,
                 flush_s: float) -> None:
        self.store = store
        self.aliases = aliases
        self.prompts = prompts
        self.relay = relay
        self.flush_s = flush_s

    async def _flush(self) -> None:
        await self.relay.flush(self.flush_s)

    # ---- versions -------------------------------------------------------------------------------

    async def RegisterModelVersion(self, request: pb.RegisterModelVersionRequest,  # noqa: N802
                                   context: Ctx) -> pb.RegisterModelVersionResponse:
        """Register a version (always a candidate); emits REGISTERED the first time."""
        v = convert.from_proto(request.version)
        v.check()
        stored, created = await self.store.register(v)
        if created:
            await self._flush()
        return pb.RegisterModelVersionResponse(version=convert.to_proto(stored))

    async def GetModelVersion(self, request: pb.GetModelVersionRequest,  # noqa: N802
                              context: Ctx) -> pb.GetModelVersionResponse:
        v = await self.store.get(check_model_name(request.model_name), request.version)
        return pb.GetModelVersionResponse(version=convert.to_proto(v))

    async def ListModelVersions(self, request: pb.ListModelVersionsRequest,  # noqa: N802
                                context: Ctx) -> pb.ListModelVersionsResponse:
        versions = await self.store.list(check_model_name(request.model_name), request.include_deleted)
        return pb.ListModelVersionsResponse(versions=[convert.to_proto(v) for v in versions])

    async def DeleteModelVersion(self, request: pb.DeleteModelVersionRequest,  # noqa: N802
                                 context: Ctx) -> pb.DeleteModelVersionResponse:
        v = await self.store.delete_version(check_model_name(request.model_name), request.version,
                                            actor_or_default(request.actor), reason_or_default(request.reason))
        await self._flush()
        return pb.DeleteModelVersionResponse(version=convert.to_proto(v))

    async def SetStage(self, request: pb.SetStageRequest, context: Ctx) -> pb.SetStageResponse:  # noqa: N802
        name, stage = check_model_name(request.model_name), convert.stage_from_proto(request.stage)
        v = await self.store.set_stage(name, request.version, stage, actor_or_default(request.actor),
                                       reason_or_default(request.reason))
        await self._flush()
        return pb.SetStageResponse(version=convert.to_proto(v))

    async def GetLineage(self, request: pb.GetLineageRequest, context: Ctx) -> pb.GetLineageResponse:  # noqa: N802
        lineage = await self.aliases.lineage(check_model_name(request.model_name), request.version)
        return convert.lineage_to_proto(lineage)

    # ---- aliases --------------------------------------------------------------------------------

    async def SetAlias(self, request: pb.SetAliasRequest, context: Ctx) -> pb.SetAliasResponse:  # noqa: N802
        """Move an alias (audited, compare-and-set); emits ALIAS_SET."""
        name, alias = check_model_name(request.model_name), check_alias(request.alias)
        move = _move(request)
        move.override_reason, move.evidence = request.override_reason, request.evidence
        v, previous = await self.aliases.set_alias(name, alias, request.version, _expected(request), move)
        await self._flush()
        return pb.SetAliasResponse(version=convert.to_proto(v), previous_version=previous)

    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Ctx) -> pb.DeleteAliasResponse:  # noqa: N802
        name, alias = check_model_name(request.model_name), check_alias(request.alias)
        previous = await self.aliases.delete_alias(name, alias, _expected(request), _move(request))
        await self._flush()
        return pb.DeleteAliasResponse(previous_version=previous)

    async def Rollback(self, request: pb.RollbackRequest, context: Ctx) -> pb.RollbackResponse:  # noqa: N802
        name, alias = check_model_name(request.model_name), check_alias(request.alias)
        v, previous = await self.aliases.rollback(name, alias, _expected(request), _move(request))
        await self._flush()
        return pb.RollbackResponse(version=convert.to_proto(v), previous_version=previous)

    async def ApproveModelVersion(self, request: pb.ApproveModelVersionRequest,  # noqa: N802
                                  context: Ctx) -> pb.ApproveModelVersionResponse:
        expected = request.expected_champion if request.HasField("expected_champion") else None
        v, previous = await self.aliases.approve(check_model_name(request.model_name), request.version, expected,
                                                 _move(request))
        await self._flush()
        return pb.ApproveModelVersionResponse(version=convert.to_proto(v), previous_version=previous)

    async def ResolveAlias(self, request: pb.ResolveAliasRequest,  # noqa: N802
                           context: Ctx) -> pb.ResolveAliasResponse:
        v = await self.aliases.resolve(check_model_name(request.model_name), check_alias(request.alias))
        return pb.ResolveAliasResponse(version=convert.to_proto(v))

    async def GetAliasHistory(self, request: pb.GetAliasHistoryRequest,  # noqa: N802
                              context: Ctx) -> pb.GetAliasHistoryResponse:
        alias = check_alias(request.alias) if request.alias else ""
        changes = await self.aliases.history(check_model_name(request.model_name), alias, max(request.limit, 0))
        return pb.GetAliasHistoryResponse(changes=[convert.change_to_proto(c) for c in changes])

    # ---- models ---------------------------------------------------------------------------------

    async def ApplyModel(self, request: pb.ApplyModelRequest, context: Ctx) -> pb.ApplyModelResponse:  # noqa: N802
        m = convert.model_from_proto(request.model)
        check_model_name(m.name)
        stored = await self.store.apply_model(m, actor_or_default(request.actor))
        await self._flush()
        return pb.ApplyModelResponse(model=convert.model_to_proto(stored))

    async def GetModel(self, request: pb.GetModelRequest, context: Ctx) -> pb.GetModelResponse:  # noqa: N802
        m = await self.store.get_model(check_model_name(request.name))
        return pb.GetModelResponse(model=convert.model_to_proto(m))

    async def ListModels(self, request: pb.ListModelsRequest, context: Ctx) -> pb.ListModelsResponse:  # noqa: N802
        return pb.ListModelsResponse(models=[convert.model_to_proto(m) for m in await self.store.list_models()])

    async def DeleteModel(self, request: pb.DeleteModelRequest, context: Ctx) -> pb.DeleteModelResponse:  # noqa: N802
        await self.store.delete_model(check_model_name(request.name), actor_or_default(request.actor),
                                      reason_or_default(request.reason))
        await self._flush()
        return pb.DeleteModelResponse()

    # ---- prompts --------------------------------------------------------------------------------
    # Prompt changes publish no event: nothing consumes one yet (inference reads prompts on demand).

    async def CreatePromptVersion(self, request: pb.CreatePromptVersionRequest,  # noqa: N802
                                  context: Ctx) -> pb.CreatePromptVersionResponse:
        """Store a template as the next version of its prompt; the same digest returns the existing one."""
        p, created = await self.prompts.create(convert.prompt_from_proto(request.prompt,
                                                                         actor_or_default(request.prompt.author)))
        return pb.CreatePromptVersionResponse(prompt=convert.prompt_to_proto(p), created=created)

    async def GetPrompt(self, request: pb.GetPromptRequest, context: Ctx) -> pb.GetPromptResponse:  # noqa: N802
        alias = check_prompt_alias(request.alias) if request.alias else ""
        if request.version < 0:
            raise invalid("version must be positive (0: by alias, or the newest)", field="version")
        p = await self.prompts.get(check_prompt_name(request.name), request.version, alias)
        return pb.GetPromptResponse(prompt=convert.prompt_to_proto(p))

    async def ListPromptVersions(self, request: pb.ListPromptVersionsRequest,  # noqa: N802
                                 context: Ctx) -> pb.ListPromptVersionsResponse:
        prompts = await self.prompts.versions(check_prompt_name(request.name))
        return pb.ListPromptVersionsResponse(prompts=[convert.prompt_to_proto(p) for p in prompts])

    async def SetPromptAlias(self, request: pb.SetPromptAliasRequest,  # noqa: N802
                             context: Ctx) -> pb.SetPromptAliasResponse:
        """Move a prompt alias (compare-and-set on expected_version; a history row per move)."""
        name, alias = check_prompt_name(request.name), check_prompt_alias(request.alias)
        expected = request.expected_version if request.HasField("expected_version") else None
        p, previous = await self.prompts.set_alias(name, alias, request.version, expected,
                                                   actor_or_default(request.actor), reason_or_default(request.reason))
        return pb.SetPromptAliasResponse(prompt=convert.prompt_to_proto(p), previous_version=previous)

    async def GetPromptAliasHistory(self, request: pb.GetPromptAliasHistoryRequest,  # noqa: N802
                                    context: Ctx) -> pb.GetPromptAliasHistoryResponse:
        alias = check_prompt_alias(request.alias) if request.alias else ""
        changes = await self.prompts.history(check_prompt_name(request.name), alias)
        return pb.GetPromptAliasHistoryResponse(changes=[convert.prompt_change_to_proto(c) for c in changes])
