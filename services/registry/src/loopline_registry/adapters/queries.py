"""Reads and small writes shared by the registry's stores, each inside a caller's connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from loopline_core.errors import not_found
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import enqueue

from loopline_registry.adapters import events
from loopline_registry.adapters.schema import model_from_row, version_from_row
from loopline_registry.domain.models import Model, Stage, Version

_VERSION = "select * from model_versions where model_name=$1 and version=$2"
_VERSION_FOR_UPDATE = _VERSION + " for update"


@asynccontextmanager
async def locked(pool: asyncpg.Pool, model_name: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction holding the model's lock: its changes serialise, so events of one model are
    created in commit order (the relay publishes them in that order) and every rule sees the latest state."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(hashtext($1))", f"registry/{model_name}")
        yield conn


async def model_row(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow("select * from models where name=$1", name)
    if row is None or row["deleted"]:
        raise not_found(f"model {name} does not exist")
    return row


async def model(conn: asyncpg.Connection, row: asyncpg.Record) -> Model:
    aliases = await conn.fetch("select alias, version from aliases where model_name=$1", row["name"])
    latest = await conn.fetchval("select coalesce(max(version), 0) from model_versions "
                                 "where model_name=$1 and not deleted", row["name"])
    return model_from_row(row, {a["alias"]: a["version"] for a in aliases}, latest)


async def version(conn: asyncpg.Connection, model_name: str, number: int, *, lock: bool = False) -> Version:
    sql = _VERSION_FOR_UPDATE if lock else _VERSION
    row = await conn.fetchrow(sql, model_name, number)
    if row is None:
        raise not_found(f"{model_name} v{number} is not registered")
    return await with_aliases(conn, row)


async def with_aliases(conn: asyncpg.Connection, row: asyncpg.Record) -> Version:
    names = await conn.fetch("select alias from aliases where model_name=$1 and version=$2 order by alias",
                             row["model_name"], row["version"])
    return version_from_row(row, [r["alias"] for r in names])


async def holder(conn: asyncpg.Connection, model_name: str, alias: str) -> int:
    """The version holding ``alias`` (0: none), its row locked until the transaction ends."""
    found = await conn.fetchval("select version from aliases where model_name=$1 and alias=$2 for update",
                                model_name, alias)
    return int(found or 0)


async def set_stage(conn: asyncpg.Connection, namer: TopicNamer, v: Version, stage: Stage, reason: str,
                    actor: str, *, deleted: bool = False) -> None:
    """Move ``v`` to ``stage`` with its STAGE_CHANGED event (nothing when it is there already)."""
    if v.stage is stage and v.deleted == deleted:
        return
    seq = await conn.fetchval("update model_versions set stage=$3, deleted=$4, stage_seq=stage_seq+1 "
                              "where model_name=$1 and version=$2 returning stage_seq",
                              v.model_name, v.version, stage.value, deleted)
    await enqueue(conn, events.stage_changed(namer, v.model_name, v.version, stage, seq, reason, actor=actor))
    v.stage, v.deleted = stage, deleted
