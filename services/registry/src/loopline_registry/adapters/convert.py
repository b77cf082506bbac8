"""Proto <-> domain for the registry (protos never reach the domain)."""

from __future__ import annotations

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.events import timestamp

from loopline_registry.domain.models import Version


def to_proto(v: Version) -> pb.ModelVersion:
    return pb.ModelVersion(model_name=v.model_name, version=v.version, artifact_uri=v.artifact_uri,
                           signature_uri=v.signature_uri, signer_key_id=v.signer_key_id,
                           dataset_digest=v.dataset_digest, metrics=v.metrics, params=v.params, run_id=v.run_id,
                           created_at=timestamp(v.created_at), aliases=v.aliases, feature_names=v.feature_names)


def from_proto(m: pb.ModelVersion) -> Version:
    return Version(m.model_name, 0, m.artifact_uri, m.signature_uri, m.signer_key_id, m.dataset_digest, m.run_id,
                   dict(m.metrics), dict(m.params), list(m.feature_names))
