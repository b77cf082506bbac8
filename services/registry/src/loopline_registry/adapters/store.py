"""Postgres persistence for the registry (schema ``registry``).

Every change is committed together with the ``ModelChanged`` event that reports it, in the
schema's outbox (:mod:`loopline_core.outbox`); the relay started in ``main`` publishes it.
"""

from __future__ import annotations

import json

import asyncpg
from loopline_core.db import Migration
from loopline_core.errors import not_found
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import enqueue, outbox_migration

from loopline_registry.adapters import events
from loopline_registry.domain.models import Version

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
]


def _version(row: asyncpg.Record, aliases: list[str]) -> Version:
    return Version(row["model_name"], row["version"], row["artifact_uri"], row["signature_uri"],
                   row["signer_key_id"], row["dataset_digest"], row["run_id"], json.loads(row["metrics"]),
                   json.loads(row["params"]), json.loads(row["feature_names"]), row["created_at"].timestamp(),
                   aliases)


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool, namer: TopicNamer) -> None:
        self.pool = pool
        self.namer = namer

    async def register(self, v: Version) -> tuple[Version, bool]:
        """Insert ``v`` with the next version number and its REGISTERED event; (existing, False),
        and no event, when its run_id is known."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(hashtext($1))", f"registry/{v.model_name}")
            existing = await conn.fetchrow("select * from model_versions where run_id=$1", v.run_id)
            if existing:
                return await self._with_aliases(conn, existing), False
            number = await conn.fetchval("select coalesce(max(version), 0) + 1 from model_versions "
                                         "where model_name=$1", v.model_name)
            row = await conn.fetchrow(
                "insert into model_versions(model_name, version, run_id, artifact_uri, signature_uri, signer_key_id,"
                " dataset_digest, metrics, params, feature_names) values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
                "returning *", v.model_name, number, v.run_id, v.artifact_uri, v.signature_uri, v.signer_key_id,
                v.dataset_digest, json.dumps(v.metrics), json.dumps(v.params), json.dumps(v.feature_names))
            await enqueue(conn, events.registered(self.namer, v.model_name, number))
            return _version(row, []), True

    async def get(self, model_name: str, version: int) -> Version:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("select * from model_versions where model_name=$1 and version=$2",
                                      model_name, version)
            if row is None:
                raise not_found(f"{model_name} v{version} is not registered")
            return await self._with_aliases(conn, row)

    async def list(self, model_name: str) -> list[Version]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select * from model_versions where model_name=$1 order by version", model_name)
            return [await self._with_aliases(conn, r) for r in rows]

    async def set_alias(self, model_name: str, alias: str, version: int, reason: str,
                        actor: str) -> tuple[Version, int]:
        """Point ``alias`` at ``version``, with an audit row and an ALIAS_SET event; returns the
        version and the one the alias pointed at before (0 for none)."""
        async with self.pool.acquire() as conn, conn.transaction():
            # the model's lock (as in register) orders its events: outbox creation order == commit order
            await conn.execute("select pg_advisory_xact_lock(hashtext($1))", f"registry/{model_name}")
            row = await conn.fetchrow("select * from model_versions where model_name=$1 and version=$2",
                                      model_name, version)
            if row is None:
                raise not_found(f"{model_name} v{version} is not registered")
            previous = await conn.fetchval("select version from aliases where model_name=$1 and alias=$2 for update",
                                           model_name, alias)
            await conn.execute("insert into aliases(model_name, alias, version) values ($1,$2,$3) "
                               "on conflict (model_name, alias) do update set version=excluded.version",
                               model_name, alias, version)
            audit_id = await conn.fetchval(
                "insert into alias_audit(model_name, alias, from_version, to_version, reason, actor)"
                " values ($1,$2,$3,$4,$5,$6) returning id", model_name, alias, previous, version, reason, actor)
            await enqueue(conn, events.alias_set(self.namer, model_name, alias, version, previous or 0, reason,
                                                 audit_id))
            return await self._with_aliases(conn, row), previous or 0

    async def resolve(self, model_name: str, alias: str) -> Version:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("select v.* from aliases a join model_versions v using (model_name, version) "
                                      "where a.model_name=$1 and a.alias=$2", model_name, alias)
            if row is None:
                raise not_found(f"{model_name} has no {alias!r} alias")
            return await self._with_aliases(conn, row)

    async def _with_aliases(self, conn: asyncpg.Connection, row: asyncpg.Record) -> Version:
        names = await conn.fetch("select alias from aliases where model_name=$1 and version=$2 order by alias",
                                 row["model_name"], row["version"])
        return _version(row, [r["alias"] for r in names])
