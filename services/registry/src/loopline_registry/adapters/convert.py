"""Proto <-> domain for the registry (protos never reach the domain).

The trainer's evidence messages (Gate, Run, SliceMetrics, Export) become JSON-shaped dicts with
their proto field names, which is also how the store keeps them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import invalid
from loopline_core.events import timestamp

from loopline_registry.domain.models import AliasChange, Lineage, Model, Stage, Version
from loopline_registry.domain.prompts import PromptAliasChange, PromptVersion, new_version

STAGES: dict[Stage, pb.Stage.ValueType] = {
    Stage.CANDIDATE: pb.STAGE_CANDIDATE, Stage.STAGING: pb.STAGE_STAGING, Stage.PRODUCTION: pb.STAGE_PRODUCTION,
    Stage.DEPRECATED: pb.STAGE_DEPRECATED, Stage.RETIRED: pb.STAGE_RETIRED}
_FROM_PROTO = {v: k for k, v in STAGES.items()}


def stage_from_proto(stage: pb.Stage.ValueType) -> Stage:
    if stage not in _FROM_PROTO:
        raise invalid("stage must be set (candidate, staging, production, deprecated or retired)")
    return _FROM_PROTO[stage]


def _dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _parse(d: dict[str, Any] | None, msg: Message) -> Any:
    if d:
        json_format.ParseDict(d, msg, ignore_unknown_fields=True)
    return msg


def to_proto(v: Version) -> pb.ModelVersion:
    m = pb.ModelVersion(model_name=v.model_name, version=v.version, artifact_uri=v.artifact_uri,
                        signature_uri=v.signature_uri, signer_key_id=v.signer_key_id,
                        dataset_digest=v.dataset_digest, metrics=v.metrics, params=v.params, run_id=v.run_id,
                        created_at=timestamp(v.created_at), aliases=v.aliases, feature_names=v.feature_names,
                        stage=STAGES[v.stage], model_card_uri=v.model_card_uri, flavor=v.flavor,
                        slices=[_parse(s, pb.SliceMetrics()) for s in v.slices],
                        exports=[_parse(e, pb.Export()) for e in v.exports])
    if v.gate is not None:
        m.gate.CopyFrom(_parse(v.gate, pb.Gate()))
    if v.run is not None:
        m.run.CopyFrom(_parse(v.run, pb.Run()))
    if v.approval is not None:
        m.approval.CopyFrom(pb.Approval(actor=v.approval.actor, reason=v.approval.reason,
                                        at=timestamp(v.approval.at)))
    return m


def from_proto(m: pb.ModelVersion) -> Version:
    """A version to register: its number, stage, aliases and approval are the registry's to set."""
    return Version(m.model_name, 0, m.artifact_uri, m.signature_uri, m.signer_key_id, m.dataset_digest, m.run_id,
                   dict(m.metrics), dict(m.params), list(m.feature_names),
                   gate={**_dict(m.gate), "passed": m.gate.passed} if m.HasField("gate") else None,
                   run=_dict(m.run) if m.HasField("run") else None,
                   slices=[_dict(s) for s in m.slices], exports=[_dict(e) for e in m.exports],
                   model_card_uri=m.model_card_uri, flavor=m.flavor)


def model_to_proto(m: Model) -> pb.Model:
    return pb.Model(name=m.name, description=m.description, requires_approval=m.requires_approval,
                    intended_use=m.intended_use, owner=m.owner, created_at=timestamp(m.created_at),
                    updated_at=timestamp(m.updated_at), aliases=m.aliases, latest_version=m.latest_version,
                    rollout=_parse(m.rollout, pb.RolloutPolicy()), variants=_parse(m.variants, pb.VariantPolicy()))


def model_from_proto(m: pb.Model) -> Model:
    """A model to apply; its policies are checked here (INVALID_ARGUMENT names the field at fault)."""
    model = Model(m.name, m.description, m.intended_use, m.owner, m.requires_approval,
                  rollout=_dict(m.rollout), variants=_dict(m.variants))
    model.check_policies()
    return model


def change_to_proto(c: AliasChange) -> pb.AliasChange:
    return pb.AliasChange(id=c.id, model_name=c.model_name, alias=c.alias, from_version=c.from_version,
                          to_version=c.to_version, actor=c.actor, reason=c.reason, at=timestamp(c.at),
                          action=c.action, override_reason=c.override_reason, evidence=c.evidence)



def lineage_to_proto(lin: Lineage) -> pb.GetLineageResponse:
    """The chain from the raw archive to the version's alias moves; snapshot and window come from its run."""
    version = to_proto(lin.version)
    run = version.run
    out = pb.GetLineageResponse(version=version, run=run,
                                alias_changes=[change_to_proto(c) for c in lin.alias_changes],
                                snapshot=pb.Snapshot(uri=run.dataset_uri, manifest_uri=run.dataset_manifest_uri,
                                                     digest=run.dataset_digest or version.dataset_digest,
                                                     feature_view=run.feature_view),
                                archive=pb.ArchiveWindow(dataset=run.dataset, uri=lin.archive_uri))
    if run.HasField("dataset_as_of"):
        out.snapshot.as_of.CopyFrom(run.dataset_as_of)
    if run.HasField("data_from"):
        getattr(out.archive, "from").CopyFrom(run.data_from)
    if run.HasField("data_to"):
        out.archive.to.CopyFrom(run.data_to)
    return out


def prompt_to_proto(p: PromptVersion) -> pb.PromptVersion:
    return pb.PromptVersion(name=p.name, version=p.version, template=p.template, variables=p.variables,
                            model_name=p.model_name, model_version=p.model_version,
                            sampling_parameters=p.sampling_parameters, digest=p.digest, description=p.description,
                            author=p.author, created_at=timestamp(p.created_at), aliases=p.aliases)


def prompt_from_proto(m: pb.PromptVersion, author: str) -> PromptVersion:
    """A version to create, checked; its number, digest, aliases and time are the registry's to set."""
    return new_version(m.name, m.template, list(m.variables), m.model_name, m.model_version, m.sampling_parameters,
                       m.description, author)


def prompt_change_to_proto(c: PromptAliasChange) -> pb.PromptAliasChange:
    return pb.PromptAliasChange(name=c.name, alias=c.alias, from_version=c.from_version, to_version=c.to_version,
                                actor=c.actor, reason=c.reason, at=timestamp(c.at))
