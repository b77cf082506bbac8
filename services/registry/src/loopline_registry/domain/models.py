"""Registry domain: aliases and the rules for moving them. No transport or database imports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from loopline_core.errors import invalid

ALIASES = ("champion", "challenger")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise invalid(f"model name must match {_NAME.pattern}: {name!r}")
    return name


def check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise invalid(f"unknown alias {alias!r}; one of {', '.join(ALIASES)}")
    return alias


@dataclass
class Version:
    model_name: str
    version: int
    artifact_uri: str
    signature_uri: str
    signer_key_id: str
    dataset_digest: str
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    created_at: float = 0.0
    aliases: list[str] = field(default_factory=list)

    def check(self) -> None:
        check_model_name(self.model_name)
        if not self.artifact_uri.startswith("s3://") or not self.signature_uri.startswith("s3://"):
            raise invalid("artifact_uri and signature_uri must be s3:// URIs")
        if not self.signer_key_id:
            raise invalid("a version must say which key signed it")
        if not self.run_id:
            raise invalid("run_id is required (it makes registration idempotent)")
