"""Postgres persistence of aliases: moves (set, rollback, approve, delete), their audit trail, lineage.

A move checks and writes under the model's lock with the alias row locked ``for update``, so two
callers moving the same alias serialise: the second sees the first's result, and its
compare-and-set fails (ABORTED) instead of silently overwriting it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg
from loopline_core.errors import not_found, precondition
from loopline_core.kafka import TopicNamer
from loopline_core.outbox import enqueue

from loopline_registry.adapters import events, queries
from loopline_registry.adapters.queries import locked
from loopline_registry.adapters.schema import change_from_row
from loopline_registry.domain import rules
from loopline_registry.domain.models import CHAMPION, Action, AliasChange, Approval, Lineage, Stage, Version


@dataclass
class Move:
    """Who moves an alias, and why."""

    actor: str
    reason: str
    override_reason: str = ""
    evidence: str = ""


class AliasStore:
    def __init__(self, pool: asyncpg.Pool, namer: TopicNamer, archive_root: str) -> None:
        self.pool = pool
        self.namer = namer
        self.archive_root = archive_root

    async def set_alias(self, model_name: str, alias: str, number: int, expected: int | None,
                        move: Move) -> tuple[Version, int]:
        """Point ``alias`` at ``number``; returns the version and the previous holder (0: none)."""
        async with locked(self.pool, model_name) as conn:
            policy = await queries.model_row(conn, model_name)
            v = await queries.version(conn, model_name, number, lock=True)
            current = await queries.holder(conn, model_name, alias)
            if current == number:  # already there: a redelivered request changes nothing
                return v, current
            rules.check_expected(model_name, alias, expected, current)
            rules.check_can_hold(v, alias, requires_approval=policy["requires_approval"],
                                 override_reason=move.override_reason)
            await self._move(conn, model_name, alias, v, current, Action.SET, move)
            return v, current

    async def delete_alias(self, model_name: str, alias: str, expected: int | None, move: Move) -> int:
        """Remove ``alias``; returns the version that held it (0: it was not set, nothing done)."""
        async with locked(self.pool, model_name) as conn:
            current = await queries.holder(conn, model_name, alias)
            rules.check_expected(model_name, alias, expected, current)
            if current:
                await self._move(conn, model_name, alias, None, current, Action.DELETE, move)
            return current

    async def rollback(self, model_name: str, alias: str, expected: int | None, move: Move) -> tuple[Version, int]:
        """Move ``alias`` back to the version that held it before its current holder."""
        async with locked(self.pool, model_name) as conn:
            current = await queries.holder(conn, model_name, alias)
            rules.check_expected(model_name, alias, expected, current)
            if not current:
                raise precondition(f"{alias} of {model_name} is not set; there is nothing to roll back")
            rows = await conn.fetch("select * from alias_audit where model_name=$1 and alias=$2 and to_version=$3 "
                                    "order by id desc", model_name, alias, current)
            target = rules.rollback_target([change_from_row(r) for r in rows], current)
            if not target:
                raise precondition(f"{alias} of {model_name} has no holder before v{current} to roll back to")
            v = await queries.version(conn, model_name, target, lock=True)
            if v.stage is Stage.RETIRED or v.deleted:
                raise precondition(f"v{target}, which held {alias} before v{current}, is retired; "
                                   "set the alias to a version explicitly")
            # no gate check: it held the alias before, and a rollback must work when it matters most
            await self._move(conn, model_name, alias, v, current, Action.ROLLBACK, move)
            return v, current

    async def approve(self, model_name: str, number: int, expected: int | None, move: Move) -> tuple[Version, int]:
        """Record the approval of a staged version and make it champion, in one transaction."""
        async with locked(self.pool, model_name) as conn:
            await queries.model_row(conn, model_name)
            v = await queries.version(conn, model_name, number, lock=True)
            rules.check_approvable(v)
            current = await queries.holder(conn, model_name, CHAMPION)
            rules.check_expected(model_name, CHAMPION, expected, current)
            at = await conn.fetchval(
                "update model_versions set approval=jsonb_build_object('actor', $3::text, 'reason', $4::text,"
                " 'at', extract(epoch from now())) where model_name=$1 and version=$2"
                " returning (approval->>'at')::float8", model_name, number, move.actor, move.reason)
            v.approval = Approval(move.actor, move.reason, at)
            await self._move(conn, model_name, CHAMPION, v, current, Action.APPROVE, move)
            return v, current

    async def resolve(self, model_name: str, alias: str) -> Version:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("select v.* from aliases a join model_versions v using (model_name, version) "
                                      "where a.model_name=$1 and a.alias=$2", model_name, alias)
            if row is None:
                raise not_found(f"{model_name} has no {alias!r} alias")
            return await queries.with_aliases(conn, row)

    async def history(self, model_name: str, alias: str, limit: int) -> list[AliasChange]:
        """Alias moves, newest first (``alias`` "" for every alias, ``limit`` 0 for all)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("select * from alias_audit where model_name=$1 and ($2 = '' or alias=$2) "
                                    "order by id desc limit $3", model_name, alias, limit or None)
            return [change_from_row(r) for r in rows]

    async def lineage(self, model_name: str, number: int) -> Lineage:
        async with self.pool.acquire() as conn:
            v = await queries.version(conn, model_name, number)
            rows = await conn.fetch("select * from alias_audit where model_name=$1 and (from_version=$2 or "
                                    "to_version=$2) order by id", model_name, number)
        dataset = (v.run or {}).get("dataset", "")
        uri = f"s3://loopline-raw/{self.archive_root}{dataset}/" if dataset else ""
        return Lineage(v, uri, [change_from_row(r) for r in rows])

    async def _move(self, conn: asyncpg.Connection, model_name: str, alias: str, to: Version | None,
                    previous: int, action: Action, move: Move) -> int:
        """Write the move, its audit row, the stages that follow a champion move, and their events."""
        if to is None:
            await conn.execute("delete from aliases where model_name=$1 and alias=$2", model_name, alias)
        else:
            await conn.execute("insert into aliases(model_name, alias, version) values ($1,$2,$3) "
                               "on conflict (model_name, alias) do update set version=excluded.version",
                               model_name, alias, to.version)
        evidence = rules.evidence(move.evidence, to.gate if to else None)
        audit_id = await conn.fetchval(
            "insert into alias_audit(model_name, alias, from_version, to_version, reason, actor, action,"
            " override_reason, evidence) values ($1,$2,$3,$4,$5,$6,$7,$8,$9) returning id",
            model_name, alias, previous or None, to.version if to else None, move.reason, move.actor, action.value,
            move.override_reason, json.dumps(evidence))
        if action is Action.APPROVE and to is not None:
            await enqueue(conn, events.approved(self.namer, model_name, to.version, move.reason, audit_id,
                                                actor=move.actor))
        stages = rules.champion_stages(to.version if to else 0, previous) if alias == CHAMPION else []
        if to is not None:
            after = dict(stages).get(to.version, to.stage)
        else:  # the stage of the version that left
            after = dict(stages).get(previous) or (await queries.version(conn, model_name, previous)).stage
        await enqueue(conn, events.alias_moved(self.namer, model_name, alias, to.version if to else 0, previous,
                                               move.reason, audit_id, action=action, actor=move.actor, stage=after))
        for number, stage in stages:
            v = to if to is not None and to.version == number else await queries.version(conn, model_name, number)
            if v.stage is not Stage.RETIRED:
                await queries.set_stage(conn, self.namer, v, stage, f"{alias} {action}: {move.reason}", move.actor)
        if to is not None:
            to.aliases = sorted({*to.aliases, alias})
        return int(audit_id)
