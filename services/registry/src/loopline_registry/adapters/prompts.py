"""Postgres persistence of prompt versions, their aliases and the aliases' moves (schema ``registry``).

Every write runs under the prompt's advisory lock (a key no model name can take), so two creates
of one prompt serialise: the second finds the first's row by digest and returns it (created=False)
instead of adding a second version with the same content; ``unique (name, digest)`` backs that up.
Alias moves check and write under the same lock with the alias row ``for update`` (compare-and-set
as for models).
"""

from __future__ import annotations

import json

import asyncpg
from loopline_core.errors import invalid, not_found, precondition

from loopline_registry.adapters.queries import locked
from loopline_registry.adapters.schema import prompt_change_from_row, prompt_from_row
from loopline_registry.domain import rules
from loopline_registry.domain.models import LLM, Stage
from loopline_registry.domain.prompts import PromptAliasChange, PromptVersion


def _lock_key(name: str) -> str:
    return f"prompt:{name}"  # ":" is not allowed in model names, so no model shares this lock


class PromptStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, p: PromptVersion) -> tuple[PromptVersion, bool]:
        """Store ``p`` as the next version of its name; (existing, False) when its digest is there already."""
        async with locked(self.pool, _lock_key(p.name)) as conn:
            existing = await conn.fetchrow("select * from prompt_versions where name=$1 and digest=$2",
                                           p.name, p.digest)
            if existing is not None:
                return await _with_aliases(conn, existing), False
            await _check_binding(conn, p.model_name, p.model_version)
            row = await conn.fetchrow(
                "insert into prompt_versions(name, version, template, variables, model_name, model_version,"
                " sampling_parameters, digest, description, author)"
                " select $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9"
                " from prompt_versions where name=$1 returning *",
                p.name, p.template, json.dumps(p.variables), p.model_name, p.model_version, p.sampling_parameters,
                p.digest, p.description, p.author)
            return prompt_from_row(row, []), True

    async def get(self, name: str, version: int, alias: str) -> PromptVersion:
        """One version: by number, by alias, or (neither) the newest. NOT_FOUND names what was asked."""
        if version and alias:
            raise invalid("name a prompt version or an alias, not both")
        async with self.pool.acquire() as conn:
            if alias:
                row = await conn.fetchrow("select p.* from prompt_aliases a join prompt_versions p"
                                          " using (name, version) where a.name=$1 and a.alias=$2", name, alias)
                what = f"alias {alias!r}"
            elif version:
                row = await conn.fetchrow("select * from prompt_versions where name=$1 and version=$2", name, version)
                what = f"version {version}"
            else:
                row = await conn.fetchrow("select * from prompt_versions where name=$1 order by version desc limit 1",
                                          name)
                what = "any version"
            if row is None:
                exists = await conn.fetchval("select exists(select 1 from prompt_versions where name=$1)", name)
                raise not_found(f"prompt {name} has no {what}" if exists else f"prompt {name} does not exist")
            return await _with_aliases(conn, row)

    async def versions(self, name: str) -> list[PromptVersion]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select * from prompt_versions where name=$1 order by version", name)
            if not rows:
                raise not_found(f"prompt {name} does not exist")
            held = await conn.fetch("select alias, version from prompt_aliases where name=$1 order by alias", name)
            return [prompt_from_row(r, [a["alias"] for a in held if a["version"] == r["version"]]) for r in rows]

    async def set_alias(self, name: str, alias: str, version: int, expected: int | None, actor: str,
                        reason: str) -> tuple[PromptVersion, int]:
        """Point ``alias`` at ``version``; returns it and the previous holder (0: none). Moving an alias
        to its holder changes nothing (no history row), so a retried request is harmless."""
        async with locked(self.pool, _lock_key(name)) as conn:
            row = await conn.fetchrow("select * from prompt_versions where name=$1 and version=$2", name, version)
            if row is None:
                exists = await conn.fetchval("select exists(select 1 from prompt_versions where name=$1)", name)
                raise not_found(f"prompt {name} has no version {version}" if exists
                                else f"prompt {name} does not exist")
            current = int(await conn.fetchval("select version from prompt_aliases where name=$1 and alias=$2 "
                                              "for update", name, alias) or 0)
            if current != version:
                rules.check_expected(f"prompt {name}", alias, expected, current)
                await conn.execute("insert into prompt_aliases(name, alias, version) values ($1,$2,$3) "
                                   "on conflict (name, alias) do update set version=excluded.version",
                                   name, alias, version)
                await conn.execute("insert into prompt_alias_audit(name, alias, from_version, to_version, actor,"
                                   " reason) values ($1,$2,$3,$4,$5,$6)", name, alias, current or None, version,
                                   actor, reason)
            return await _with_aliases(conn, row), current

    async def history(self, name: str, alias: str) -> list[PromptAliasChange]:
        """Every move of the prompt's aliases (or of one), newest first."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select * from prompt_alias_audit where name=$1 and ($2 = '' or alias=$2) "
                                    "order by id desc", name, alias)
            if not rows and not await conn.fetchval("select exists(select 1 from prompt_versions where name=$1)",
                                                    name):
                raise not_found(f"prompt {name} does not exist")
            return [prompt_change_from_row(r) for r in rows]


async def _with_aliases(conn: asyncpg.Connection, row: asyncpg.Record) -> PromptVersion:
    names = await conn.fetch("select alias from prompt_aliases where name=$1 and version=$2 order by alias",
                             row["name"], row["version"])
    return prompt_from_row(row, [r["alias"] for r in names])


async def _check_binding(conn: asyncpg.Connection, model_name: str, model_version: int) -> None:
    """The bound model exists and serves an LLM; a bound version exists, is not retired and is an LLM
    (a model with no versions yet passes: its LLM may be registered after its prompts are written).

    FAILED_PRECONDITION, not NOT_FOUND: the call names a prompt, and what is missing is something
    else the registry must hold first (register the model, then its prompts); NOT_FOUND from a
    prompt call always means the prompt (or its version or alias) is not there.
    """
    model = await conn.fetchrow("select deleted from models where name=$1", model_name)
    if model is None or model["deleted"]:
        raise precondition(f"model {model_name} is not in the registry; register it before its prompts")
    if not model_version:
        flavors = {r["flavor"] for r in await conn.fetch(
            "select distinct flavor from model_versions where model_name=$1 and not deleted", model_name)}
        if flavors and LLM not in flavors:
            raise precondition(f"model {model_name} has no LLM version (flavor llm); a prompt binds a causal LM")
        return
    v = await conn.fetchrow("select flavor, stage, deleted from model_versions where model_name=$1 and version=$2",
                            model_name, model_version)
    if v is None:
        raise precondition(f"{model_name} v{model_version} is not registered")
    if v["deleted"] or v["stage"] == Stage.RETIRED.value:
        raise precondition(f"{model_name} v{model_version} is retired")
    if v["flavor"] != LLM:
        raise precondition(f"{model_name} v{model_version} is not an LLM (flavor {v['flavor'] or 'mlp'!r}); "
                           "a prompt binds a causal LM")
