"""Registry domain types: models, versions, stages, alias changes. No transport or database imports.

The trainer's evidence (gate, run, slices, exports) is kept as plain JSON-shaped dicts: the domain
reads only the gate's verdict and checks, and the rest travels through untouched.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

from loopline_core.errors import invalid

ALIASES = ("champion", "challenger")
CHAMPION = "champion"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class Stage(enum.StrEnum):
    CANDIDATE = "candidate"
    STAGING = "staging"
    PRODUCTION = "production"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


class Action(enum.StrEnum):
    """How an alias moved (the audit row's ``action``)."""

    SET = "set"
    ROLLBACK = "rollback"
    APPROVE = "approve"
    DELETE = "delete"


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise invalid(f"model name must match {_NAME.pattern}: {name!r}")
    return name


def check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise invalid(f"unknown alias {alias!r}; one of {', '.join(ALIASES)}")
    return alias


def reason_or_default(reason: str) -> str:
    return reason or "unspecified"


def actor_or_default(actor: str) -> str:
    return actor or "unknown"


@dataclass
class Model:
    name: str
    description: str = ""
    intended_use: str = ""
    owner: str = ""
    requires_approval: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    aliases: dict[str, int] = field(default_factory=dict)
    latest_version: int = 0
    deleted: bool = False
    rollout: dict[str, Any] = field(default_factory=dict)
    """The RolloutPolicy as JSON with its proto field names (unset fields absent)."""
    variants: dict[str, Any] = field(default_factory=dict)
    """The VariantPolicy, likewise."""

    def spec(self) -> tuple[str, str, str, bool, str, str]:
        """What ApplyModel sets (the rest is written by the registry)."""
        return (self.description, self.intended_use, self.owner, self.requires_approval,
                json.dumps(self.rollout, sort_keys=True), json.dumps(self.variants, sort_keys=True))

    def check_policies(self) -> None:
        """A rollout policy the retrainer and inference can act on, and variants inference knows."""
        r, v = self.rollout, self.variants
        _one_of("rollout.mode", r.get("mode", ""), ("", "direct", "canary", "shadow"))
        _one_of("rollout.sticky_by", r.get("sticky_by", ""), ("", "entity", "request"))
        if not 0 <= float(r.get("canary_share", 0)) <= 1:
            raise invalid("rollout.canary_share must be within 0..1", field="rollout.canary_share")
        if r.get("mode") == "canary" and not float(r.get("canary_share", 0)) > 0:
            raise invalid("a canary rollout needs a canary_share above 0", field="rollout.canary_share")
        if not 0 <= float(r.get("alpha", 0)) < 1:
            raise invalid("rollout.alpha must be within [0, 1) (0: the default)", field="rollout.alpha")
        for key in ("min_samples", "latency_budget_ms", "min_duration_s", "max_duration_s"):
            if float(r.get(key, 0)) < 0:
                raise invalid(f"rollout.{key} must not be negative", field=f"rollout.{key}")
        if 0 < float(r.get("max_duration_s", 0)) < float(r.get("min_duration_s", 0)):
            raise invalid("rollout.max_duration_s must be 0 (no limit) or at least min_duration_s",
                          field="rollout.max_duration_s")
        for key in ("default_variant", "fast_variant"):
            _one_of(f"variants.{key}", v.get(key, ""), ("", *VARIANTS))
        if float(v.get("fast_budget_ms", 0)) < 0:
            raise invalid("variants.fast_budget_ms must not be negative", field="variants.fast_budget_ms")


VARIANTS = ("torch", "onnx", "onnx-int8", "triton")
FLAVORS = ("", "mlp", "llm")
LLM = "llm"


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise invalid(f"{name} must be one of {', '.join(a for a in allowed if a)}: {value!r}", field=name)


@dataclass
class Approval:
    actor: str
    reason: str
    at: float


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
    stage: Stage = Stage.CANDIDATE
    deleted: bool = False
    gate: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    model_card_uri: str = ""
    approval: Approval | None = None
    flavor: str = ""
    """What the artifact is: "" or "mlp" (a scoring network), "llm" (a causal LM served through vLLM)."""

    def check(self) -> None:
        check_model_name(self.model_name)
        _one_of("flavor", self.flavor, FLAVORS)
        if not self.artifact_uri.startswith("s3://") or not self.signature_uri.startswith("s3://"):
            raise invalid("artifact_uri and signature_uri must be s3:// URIs")
        if not self.signer_key_id:
            raise invalid("a version must say which key signed it")
        if not self.run_id:
            raise invalid("run_id is required (it makes registration idempotent)")

    @property
    def label(self) -> str:
        return f"{self.model_name} v{self.version}"

    @property
    def gate_passed(self) -> bool:
        """A missing gate is a gate that did not pass: no evidence, no promotion."""
        return bool(self.gate and self.gate.get("passed"))


@dataclass
class AliasChange:
    id: int
    model_name: str
    alias: str
    from_version: int
    to_version: int
    actor: str
    reason: str
    at: float
    action: str
    override_reason: str = ""
    evidence: str = "{}"


@dataclass
class Lineage:
    version: Version
    archive_uri: str
    alias_changes: list[AliasChange]
