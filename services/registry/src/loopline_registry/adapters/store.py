"""Postgres persistence of models and versions (schema ``registry``).

Every change is committed together with the ``ModelChanged`` event that reports it, in the
schema's outbox (:mod:`loopline_core.outbox`), under the model's lock; the relay started in
``main`` publishes it.
"""

from __future__ import annotations

import json

import asyncpg
from loopline_core.errors import precondition
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import enqueue

from loopline_registry.adapters import events, queries
from loopline_registry.adapters.queries import locked
from loopline_registry.adapters.schema import version_from_row
from loopline_registry.domain import rules
from loopline_registry.domain.models import Model, Stage, Version


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool, namer: TopicNamer) -> None:
        self.pool = pool
        self.namer = namer

    # ---- models ---------------------------------------------------------------------------------

    async def apply_model(self, m: Model, actor: str) -> Model:
        """Create or update a model's description and policy (undeleting it); an event only when it changed."""
        async with locked(self.pool, m.name) as conn:
            row = await conn.fetchrow("select * from models where name=$1", m.name)
            current = Model(row["name"], row["description"], row["intended_use"], row["owner"],
                            row["requires_approval"], rollout=json.loads(row["rollout"]),
                            variants=json.loads(row["variants"])) if row else None
            if row is None or row["deleted"] or current is None or current.spec() != m.spec():
                row = await conn.fetchrow(
                    "insert into models(name, description, intended_use, owner, requires_approval, rollout, variants,"
                    " revision) values ($1,$2,$3,$4,$5,$6,$7,1) on conflict (name) do update set"
                    " description=excluded.description, intended_use=excluded.intended_use, owner=excluded.owner,"
                    " requires_approval=excluded.requires_approval, rollout=excluded.rollout,"
                    " variants=excluded.variants, deleted=false, revision=models.revision+1, updated_at=now()"
                    " returning *",
                    m.name, m.description, m.intended_use, m.owner, m.requires_approval, json.dumps(m.rollout),
                    json.dumps(m.variants))
                await enqueue(conn, events.model_changed(self.namer, m.name, row["revision"], "applied",
                                                         actor=actor, deleted=False))
            return await queries.model(conn, row)

    async def get_model(self, name: str) -> Model:
        async with self.pool.acquire() as conn:
            return await queries.model(conn, await queries.model_row(conn, name))

    async def list_models(self) -> list[Model]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select * from models where not deleted order by name")
            return [await queries.model(conn, r) for r in rows]

    async def delete_model(self, name: str, actor: str, reason: str) -> None:
        """Soft-delete a model none of whose versions holds an alias (deleting a deleted one is a no-op)."""
        async with locked(self.pool, name) as conn:
            row = await conn.fetchrow("select deleted from models where name=$1", name)
            if row is not None and row["deleted"]:
                return
            await queries.model_row(conn, name)
            held = await conn.fetch("select alias, version from aliases where model_name=$1 order by alias", name)
            if held:
                raise precondition(f"model {name} still has aliases ("
                                   + ", ".join(f"{a['alias']} -> v{a['version']}" for a in held)
                                   + "); delete them first")
            revision = await conn.fetchval("update models set deleted=true, revision=revision+1, updated_at=now() "
                                           "where name=$1 returning revision", name)
            await enqueue(conn, events.model_changed(self.namer, name, revision, reason, actor=actor, deleted=True))

    # ---- versions -------------------------------------------------------------------------------

    async def register(self, v: Version) -> tuple[Version, bool]:
        """Insert ``v`` as a candidate with the next version number and its REGISTERED event; (existing,
        False), and no event, when its run_id is known. A model that does not exist is created."""
        async with locked(self.pool, v.model_name) as conn:
            existing = await conn.fetchrow("select * from model_versions where run_id=$1", v.run_id)
            if existing:
                return await queries.with_aliases(conn, existing), False
            deleted = await conn.fetchval("insert into models(name) values ($1) on conflict (name) do update "
                                          "set name=excluded.name returning deleted", v.model_name)
            if deleted:
                raise precondition(f"model {v.model_name} is deleted; apply it again to register versions")
            number = await conn.fetchval("select coalesce(max(version), 0) + 1 from model_versions "
                                         "where model_name=$1", v.model_name)
            row = await conn.fetchrow(
                "insert into model_versions(model_name, version, run_id, artifact_uri, signature_uri, signer_key_id,"
                " dataset_digest, metrics, params, feature_names, stage, gate, run, slices, exports, model_card_uri,"
                " flavor) values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) returning *",
                v.model_name, number, v.run_id, v.artifact_uri, v.signature_uri, v.signer_key_id, v.dataset_digest,
                json.dumps(v.metrics), json.dumps(v.params), json.dumps(v.feature_names), Stage.CANDIDATE.value,
                _opt_json(v.gate), _opt_json(v.run), json.dumps(v.slices), json.dumps(v.exports), v.model_card_uri,
                v.flavor)
            await enqueue(conn, events.registered(self.namer, v.model_name, number))
            return version_from_row(row, []), True

    async def get(self, model_name: str, number: int) -> Version:
        async with self.pool.acquire() as conn:
            return await queries.version(conn, model_name, number)

    async def list(self, model_name: str, include_deleted: bool) -> list[Version]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select * from model_versions where model_name=$1 and (not deleted or $2) "
                                    "order by version", model_name, include_deleted)
            return [await queries.with_aliases(conn, r) for r in rows]

    async def set_stage(self, model_name: str, number: int, stage: Stage, actor: str, reason: str) -> Version:
        async with locked(self.pool, model_name) as conn:
            v = await queries.version(conn, model_name, number, lock=True)
            if rules.check_stage_change(v, stage, v.aliases):
                await queries.set_stage(conn, self.namer, v, stage, reason, actor)
            return v

    async def delete_version(self, model_name: str, number: int, actor: str, reason: str) -> Version:
        """Retire a version that holds no alias and hide it from listings (again: a no-op)."""
        async with locked(self.pool, model_name) as conn:
            v = await queries.version(conn, model_name, number, lock=True)
            if v.aliases:
                raise precondition(f"{v.label} holds {', '.join(v.aliases)}; move the alias first")
            await queries.set_stage(conn, self.namer, v, Stage.RETIRED, reason, actor, deleted=True)
            return v


def _opt_json(value: object) -> str | None:
    return json.dumps(value) if value is not None else None
