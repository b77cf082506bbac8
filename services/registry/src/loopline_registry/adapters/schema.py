"""The registry's tables (schema ``registry``) and how their rows read as domain types."""

from __future__ import annotations

import json

import asyncpg
from loopline_core.db import Migration
from loopline_core.outbox import outbox_migration

from loopline_registry.domain.models import AliasChange, Approval, Model, Stage, Version
from loopline_registry.domain.prompts import PromptAliasChange, PromptVersion

SCHEMA = "registry"
MIGRATIONS = [
    Migration(1, "versions_aliases_audit", """
        create table model_versions (
            model_name text not null, version int not null, run_id text not null unique,
            artifact_uri text not null, signature_uri text not null, signer_key_id text not null,
            dataset_digest text not null, metrics jsonb not null, params jsonb not null,
            feature_names jsonb not null, created_at timestamptz not null default now(),
            primary key (model_name, version));
        create table aliases (
            model_name text not null, alias text not null, version int not null,
            primary key (model_name, alias), foreign key (model_name, version) references model_versions);
        create table alias_audit (
            id bigserial primary key, model_name text not null, alias text not null,
            from_version int, to_version int not null, reason text not null, actor text not null,
            at timestamptz not null default now());
    """),
    outbox_migration(2),
    # Models with a policy; stages, evidence and soft deletion on versions; how and why on audit rows.
    # ``revision``/``stage_seq`` count changes so each change's event gets an id derived from it.
    Migration(3, "models_stages_evidence", """
        create table models (
            name text primary key, description text not null default '', intended_use text not null default '',
            owner text not null default '', requires_approval boolean not null default false,
            deleted boolean not null default false, revision int not null default 0,
            created_at timestamptz not null default now(), updated_at timestamptz not null default now());
        insert into models(name) select distinct model_name from model_versions;
        alter table model_versions
            add column stage text not null default 'candidate', add column stage_seq int not null default 0,
            add column deleted boolean not null default false, add column gate jsonb, add column run jsonb,
            add column slices jsonb not null default '[]', add column exports jsonb not null default '[]',
            add column model_card_uri text not null default '', add column approval jsonb;
        update model_versions v set stage = 'production' from aliases a
            where a.alias = 'champion' and a.model_name = v.model_name and a.version = v.version;
        alter table alias_audit
            add column action text not null default 'set', add column override_reason text not null default '',
            add column evidence jsonb not null default '{}', alter column to_version drop not null;
        create index alias_audit_model on alias_audit (model_name, id);
    """),
    # The model's rollout and variant policies, as the proto's JSON (field names as in the proto).
    Migration(4, "rollout_variant_policies", """
        alter table models add column rollout jsonb not null default '{}',
            add column variants jsonb not null default '{}';
    """),
    # What a version's artifact is ("", "mlp", "llm"); prompts as versioned artifacts with aliases and
    # their moves. (name, digest) is unique: the same content under a name is one version, even when
    # two creates race past the advisory lock's reader (they cannot, but the table says so too).
    Migration(5, "flavor_prompts", """
        alter table model_versions add column flavor text not null default '';
        create table prompt_versions (
            name text not null, version int not null, template text not null, variables jsonb not null,
            model_name text not null, model_version int not null, sampling_parameters text not null,
            digest text not null, description text not null default '', author text not null default '',
            created_at timestamptz not null default now(),
            primary key (name, version), unique (name, digest));
        create table prompt_aliases (
            name text not null, alias text not null, version int not null,
            primary key (name, alias), foreign key (name, version) references prompt_versions);
        create table prompt_alias_audit (
            id bigserial primary key, name text not null, alias text not null, from_version int,
            to_version int not null, actor text not null, reason text not null,
            at timestamptz not null default now());
        create index prompt_alias_audit_name on prompt_alias_audit (name, id);
    """),
]


def _ts(value: object) -> float:
    return value.timestamp() if value is not None else 0.0  # type: ignore[attr-defined]


def _json(raw: str | None) -> object:
    return json.loads(raw) if raw is not None else None


def version_from_row(row: asyncpg.Record, aliases: list[str]) -> Version:
    approval = _json(row["approval"])
    return Version(
        row["model_name"], row["version"], row["artifact_uri"], row["signature_uri"], row["signer_key_id"],
        row["dataset_digest"], row["run_id"], json.loads(row["metrics"]), json.loads(row["params"]),
        json.loads(row["feature_names"]), _ts(row["created_at"]), aliases, Stage(row["stage"]), row["deleted"],
        _json(row["gate"]), _json(row["run"]), json.loads(row["slices"]),  # type: ignore[arg-type]
        json.loads(row["exports"]), row["model_card_uri"],
        Approval(**approval) if isinstance(approval, dict) else None, row["flavor"])


def prompt_from_row(row: asyncpg.Record, aliases: list[str]) -> PromptVersion:
    return PromptVersion(row["name"], row["version"], row["template"], json.loads(row["variables"]),
                         row["model_name"], row["model_version"], row["sampling_parameters"], row["digest"],
                         row["description"], row["author"], _ts(row["created_at"]), aliases)


def prompt_change_from_row(row: asyncpg.Record) -> PromptAliasChange:
    return PromptAliasChange(row["name"], row["alias"], row["from_version"] or 0, row["to_version"], row["actor"],
                             row["reason"], _ts(row["at"]))


def model_from_row(row: asyncpg.Record, aliases: dict[str, int], latest: int) -> Model:
    return Model(row["name"], row["description"], row["intended_use"], row["owner"], row["requires_approval"],
                 _ts(row["created_at"]), _ts(row["updated_at"]), aliases, latest, row["deleted"],
                 json.loads(row["rollout"]), json.loads(row["variants"]))


def change_from_row(row: asyncpg.Record) -> AliasChange:
    return AliasChange(row["id"], row["model_name"], row["alias"], row["from_version"] or 0, row["to_version"] or 0,
                       row["actor"], row["reason"], _ts(row["at"]), row["action"], row["override_reason"],
                       row["evidence"])
