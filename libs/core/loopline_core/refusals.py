"""Telling operators that a service refused a model artifact (unsigned, unknown or revoked key, tampered).

A refusal is an alert, not a failure of the refusing service: it keeps serving what it served before.
The event goes on the alerts topic beside drift alerts, keyed by model name, so one consumer sees both.
"""

from __future__ import annotations

import logging

from loopline.monitor.v1.events_pb2 import ArtifactRefused
from prometheus_client import Counter

from loopline_core.errors import LooplineError
from loopline_core.events import derived_id, metadata
from loopline_core.kafka.publisher import Publisher
from loopline_core.kafka.topics import TopicNamer

log = logging.getLogger(__name__)

MESSAGE_TYPE = "loopline.monitor.v1.ArtifactRefused"
KINDS = ("unsigned", "unknown_key", "revoked_key", "tampered")

REFUSALS = Counter("loopline_artifact_refusals_total", "Model artifacts a service refused to load",
                   ["service", "kind"])


def refusal_kind(error: LooplineError) -> str:
    """The refusal kind an error carries (``details["refusal"]``); an error without one counts as tampered,
    the kind that needs the closest look."""
    kind = error.details.get("refusal", "")
    return kind if kind in KINDS else "tampered"


def refusal_event(*, service: str, model: str, version: int, artifact_uri: str, signer_key_id: str,
                  error: LooplineError) -> ArtifactRefused:
    """The event for one refusal. Its id is derived from who refused what and why, so a service that
    refuses the same artifact again (a redelivery, a restart) repeats one event instead of adding one."""
    kind = refusal_kind(error)
    key_id = signer_key_id or error.details.get("signer_key_id", "")
    return ArtifactRefused(
        metadata=metadata(service, derived_id("artifact-refused", service, model, str(version), kind)),
        model_name=model, model_version=version, service=service, kind=kind, reason=error.message,
        signer_key_id=key_id, artifact_uri=artifact_uri)


async def report_refusal(publisher: Publisher, namer: TopicNamer, *, service: str, model: str, version: int,
                         artifact_uri: str, signer_key_id: str, error: LooplineError) -> None:
    """Publish ``monitor.v1.ArtifactRefused`` on the alerts topic and count it; waits for the broker's ack."""
    event = refusal_event(service=service, model=model, version=version, artifact_uri=artifact_uri,
                          signer_key_id=signer_key_id, error=error)
    REFUSALS.labels(service, event.kind).inc()
    log.warning("artifact refused", extra={"service": service, "model": model, "version": version,
                                           "kind": event.kind, "signer_key_id": event.signer_key_id})
    await publisher.publish(namer.alerts(), event.SerializeToString(), key=model, message_type=MESSAGE_TYPE)
