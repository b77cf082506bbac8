"""The one typed client of the registry, used by every service and the CLI.

It maps the registry's gRPC statuses to :class:`ErrorKind` in one place, so every caller reads a
NOT_FOUND as "not there" (permanent), an ABORTED as "someone moved it first" (with the current
holder in ``details["current_version"]``), and only transport trouble as UNAVAILABLE (transient).
"""

from __future__ import annotations

from typing import Any

import grpc
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc

from loopline_core.auth import ClientCredentials
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.grpcx import channel, error_from_status


def as_error(exc: grpc.aio.AioRpcError) -> LooplineError:
    """A registry status as a :class:`LooplineError`; trailing ``x-loopline-*`` metadata become details.
    Codes the registry does not answer on purpose (UNAVAILABLE, DEADLINE_EXCEEDED, ...) are transient."""
    return error_from_status(exc, "registry")


STAGES: dict[str, pb.Stage.ValueType] = {"candidate": pb.STAGE_CANDIDATE, "staging": pb.STAGE_STAGING,
                            "production": pb.STAGE_PRODUCTION, "deprecated": pb.STAGE_DEPRECATED,
                            "retired": pb.STAGE_RETIRED}


def stage_name(stage: pb.Stage.ValueType) -> str:
    return next((k for k, v in STAGES.items() if v == stage), "unspecified")


class RegistryClient:
    def __init__(self, addr: str, *, timeout_s: float = 10.0, credentials: ClientCredentials | None = None) -> None:
        self._channel = channel(addr, credentials)  # credentials default to LOOPLINE_AUTH_*
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, rpc: Any, request: object) -> Any:
        try:
            return await rpc(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise as_error(exc) from exc

    # ---- versions -------------------------------------------------------------------------------

    async def register(self, version: pb.ModelVersion) -> pb.ModelVersion:
        req = pb.RegisterModelVersionRequest(version=version)
        resp: pb.RegisterModelVersionResponse = await self._call(self._stub.RegisterModelVersion, req)
        return resp.version

    async def get(self, model: str, version: int) -> pb.ModelVersion:
        req = pb.GetModelVersionRequest(model_name=model, version=version)
        resp: pb.GetModelVersionResponse = await self._call(self._stub.GetModelVersion, req)
        return resp.version

    async def versions(self, model: str, *, include_deleted: bool = False) -> list[pb.ModelVersion]:
        resp: pb.ListModelVersionsResponse = await self._call(self._stub.ListModelVersions,
                                pb.ListModelVersionsRequest(model_name=model, include_deleted=include_deleted))
        return list(resp.versions)

    async def by_run(self, model: str, run_id: str) -> pb.ModelVersion | None:
        """The version a run registered, if it did (deleted ones included: a run id is never reused)."""
        return next((v for v in await self.versions(model, include_deleted=True) if v.run_id == run_id), None)

    async def set_stage(self, model: str, version: int, stage: str, *, actor: str, reason: str) -> pb.ModelVersion:
        resp: pb.SetStageResponse = await self._call(self._stub.SetStage, pb.SetStageRequest(
            model_name=model, version=version, stage=STAGES[stage], actor=actor, reason=reason))
        return resp.version

    async def delete_version(self, model: str, version: int, *, actor: str, reason: str) -> pb.ModelVersion:
        req = pb.DeleteModelVersionRequest(model_name=model, version=version, actor=actor, reason=reason)
        resp: pb.DeleteModelVersionResponse = await self._call(self._stub.DeleteModelVersion, req)
        return resp.version

    async def approve(self, model: str, version: int, *, actor: str, reason: str,
                      expected_champion: int | None = None) -> tuple[pb.ModelVersion, int]:
        req = pb.ApproveModelVersionRequest(model_name=model, version=version, actor=actor, reason=reason)
        if expected_champion is not None:
            req.expected_champion = expected_champion
        resp: pb.ApproveModelVersionResponse = await self._call(self._stub.ApproveModelVersion, req)
        return resp.version, resp.previous_version

    async def lineage(self, model: str, version: int) -> pb.GetLineageResponse:
        resp: pb.GetLineageResponse = await self._call(self._stub.GetLineage,
                                                       pb.GetLineageRequest(model_name=model, version=version))
        return resp

    # ---- aliases --------------------------------------------------------------------------------

    async def resolve(self, model: str, alias: str) -> pb.ModelVersion | None:
        """The version ``alias`` points at; None when the model or the alias does not exist."""
        try:
            req = pb.ResolveAliasRequest(model_name=model, alias=alias)
            resp: pb.ResolveAliasResponse = await self._call(self._stub.ResolveAlias, req)
        except LooplineError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return resp.version

    async def champion(self, model: str) -> pb.ModelVersion | None:
        return await self.resolve(model, "champion")

    async def set_alias(self, model: str, alias: str, version: int, *, actor: str, reason: str,
                        expected: int | None = None, override_reason: str = "",
                        evidence: str = "") -> tuple[pb.ModelVersion, int]:
        """Move ``alias`` to ``version``; with ``expected`` (0: unset) only if that is its holder now,
        else ABORTED with ``details["current_version"]``. Returns (version, previous holder or 0)."""
        req = pb.SetAliasRequest(model_name=model, alias=alias, version=version, actor=actor, reason=reason,
                                 override_reason=override_reason, evidence=evidence)
        if expected is not None:
            req.expected_version = expected
        resp: pb.SetAliasResponse = await self._call(self._stub.SetAlias, req)
        return resp.version, resp.previous_version

    async def delete_alias(self, model: str, alias: str, *, actor: str, reason: str,
                           expected: int | None = None) -> int:
        req = pb.DeleteAliasRequest(model_name=model, alias=alias, actor=actor, reason=reason)
        if expected is not None:
            req.expected_version = expected
        resp: pb.DeleteAliasResponse = await self._call(self._stub.DeleteAlias, req)
        return resp.previous_version

    async def rollback(self, model: str, alias: str, *, actor: str, reason: str,
                       expected: int | None = None) -> tuple[pb.ModelVersion, int]:
        req = pb.RollbackRequest(model_name=model, alias=alias, actor=actor, reason=reason)
        if expected is not None:
            req.expected_version = expected
        resp: pb.RollbackResponse = await self._call(self._stub.Rollback, req)
        return resp.version, resp.previous_version

    async def history(self, model: str, alias: str = "", limit: int = 0) -> list[pb.AliasChange]:
        resp: pb.GetAliasHistoryResponse = await self._call(self._stub.GetAliasHistory,
                                pb.GetAliasHistoryRequest(model_name=model, alias=alias, limit=limit))
        return list(resp.changes)

    # ---- models ---------------------------------------------------------------------------------

    async def apply_model(self, model: pb.Model, *, actor: str = "") -> pb.Model:
        resp: pb.ApplyModelResponse = await self._call(self._stub.ApplyModel, pb.ApplyModelRequest(model=model,
                                                                                                actor=actor))
        return resp.model

    async def model(self, name: str) -> pb.Model:
        resp: pb.GetModelResponse = await self._call(self._stub.GetModel, pb.GetModelRequest(name=name))
        return resp.model

    async def models(self) -> list[pb.Model]:
        resp: pb.ListModelsResponse = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return list(resp.models)

    async def delete_model(self, name: str, *, actor: str, reason: str) -> None:
        await self._call(self._stub.DeleteModel, pb.DeleteModelRequest(name=name, actor=actor, reason=reason))

    # ---- prompts --------------------------------------------------------------------------------

    async def create_prompt(self, prompt: pb.PromptVersion) -> tuple[pb.PromptVersion, bool]:
        """Store ``prompt`` as its name's next version; (existing, False) when the same content is there."""
        resp: pb.CreatePromptVersionResponse = await self._call(self._stub.CreatePromptVersion,
                                                                pb.CreatePromptVersionRequest(prompt=prompt))
        return resp.prompt, resp.created

    async def get_prompt(self, name: str, version: int = 0, alias: str = "") -> pb.PromptVersion:
        """One version of a prompt: by ``version``, by ``alias``, or (neither) the newest. Raises
        LooplineError NOT_FOUND, naming what was asked, when the prompt, version or alias is not there."""
        resp: pb.GetPromptResponse = await self._call(self._stub.GetPrompt,
                                                      pb.GetPromptRequest(name=name, version=version, alias=alias))
        return resp.prompt

    async def prompt_versions(self, name: str) -> list[pb.PromptVersion]:
        """Every version of a prompt, oldest first (NOT_FOUND when it has none)."""
        resp: pb.ListPromptVersionsResponse = await self._call(self._stub.ListPromptVersions,
                                                               pb.ListPromptVersionsRequest(name=name))
        return list(resp.prompts)

    async def set_prompt_alias(self, name: str, alias: str, version: int, *, actor: str, reason: str,
                               expected: int | None = None) -> tuple[pb.PromptVersion, int]:
        """Move a prompt's ``alias`` to ``version``; with ``expected`` (0: unset) only if that is its
        holder now, else ABORTED with ``details["current_version"]``. Returns (version, previous or 0)."""
        req = pb.SetPromptAliasRequest(name=name, alias=alias, version=version, actor=actor, reason=reason)
        if expected is not None:
            req.expected_version = expected
        resp: pb.SetPromptAliasResponse = await self._call(self._stub.SetPromptAlias, req)
        return resp.prompt, resp.previous_version

    async def prompt_history(self, name: str, alias: str = "") -> list[pb.PromptAliasChange]:
        """Every move of the prompt's aliases (or of one), newest first."""
        resp: pb.GetPromptAliasHistoryResponse = await self._call(
            self._stub.GetPromptAliasHistory, pb.GetPromptAliasHistoryRequest(name=name, alias=alias))
        return list(resp.changes)
