"""The monitor's LLM state in Postgres: generations (one row per event id, with the input's embedding) and
feedback (one row per event id, joined to its generation by request id from whichever side comes second).

Only redacted text reaches these tables: inference redacts a generation's input and output before it
logs them. The preference export (``loopline llm export-preferences``) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import numpy as np
from loopline_core.db import Migration

from loopline_monitor.domain.llm import GenRow

LLM_MIGRATION = Migration(4, "llm_generations_feedback", """
    create table generations (
        seq bigserial primary key, event_id text not null unique, request_id text not null,
        model_name text not null, model_version int not null, variant text not null,
        prompt_name text not null, prompt_version bigint not null,
        input_text text not null, output_text text not null,
        prompt_tokens bigint not null, completion_tokens bigint not null,
        cost double precision not null, currency text not null, latency_ms double precision not null,
        refused boolean not null, guardrail_hits int not null, outcome text not null,
        at double precision not null, embedding real[] not null);
    create index generations_version_seq on generations (model_name, model_version, seq);
    create index generations_request on generations (request_id);
    create index generations_model_at on generations (model_name, at);
    create table feedback (
        event_id text primary key, request_id text not null, model_name text not null, kind text not null,
        score double precision not null, correction text not null, rater text not null,
        received_at timestamptz not null default now(), generation_seq bigint, dead boolean not null default false,
        raw bytea not null, key bytea, topic text not null);
    create index feedback_waiting on feedback (received_at) where generation_seq is null and not dead;
    create index feedback_request on feedback (request_id) where generation_seq is null;
    create index feedback_generation on feedback (generation_seq);
""")

_GEN = "seq, at, embedding, completion_tokens, latency_ms, refused, guardrail_hits, outcome"


@dataclass(frozen=True)
class NewGeneration:
    event_id: str
    request_id: str
    model: str
    version: int
    variant: str
    prompt_name: str
    prompt_version: int
    input_text: str
    output_text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    currency: str
    latency_ms: float
    refused: bool
    guardrail_hits: int
    outcome: str
    at: float
    embedding: np.ndarray


def gen_row(seq: int, at: float, embedding: np.ndarray, completion_tokens: int, latency_ms: float, refused: bool,
            guardrail_hits: int, outcome: str) -> GenRow:
    return GenRow(seq, at, embedding, completion_tokens, latency_ms, refused, guardrail_hits > 0,
                  outcome == "ok" and completion_tokens > 0)


def _gen(r: asyncpg.Record) -> GenRow:
    return gen_row(r["seq"], r["at"], np.asarray(r["embedding"], dtype=np.float32), r["completion_tokens"],
                   r["latency_ms"], r["refused"], r["guardrail_hits"], r["outcome"])


def _array(v: np.ndarray) -> str:
    return "{" + ",".join(f"{float(x):.7g}" for x in v) + "}"


class LlmStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, rows: list[NewGeneration]) -> tuple[list[tuple[NewGeneration, int]], list[tuple[str, int]]]:
        """Insert generations (a repeat of an event id changes nothing) and join the feedback that came first.
        Returns the new rows with their sequence numbers, and the (model, version) of each feedback joined."""
        if not rows:
            return [], []
        async with self.pool.acquire() as conn, conn.transaction():
            added = await conn.fetch(
                "insert into generations(event_id, request_id, model_name, model_version, variant, prompt_name, "
                "prompt_version, input_text, output_text, prompt_tokens, completion_tokens, cost, currency, "
                "latency_ms, refused, guardrail_hits, outcome, at, embedding) "
                "select e, r, m, v, va, pn, pv, it, ot, pt, ct, c, cu, l, rf, g, o, a, em::real[] from unnest("
                "$1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bigint[], $8::text[], "
                "$9::text[], $10::bigint[], $11::bigint[], $12::float8[], $13::text[], $14::float8[], $15::bool[], "
                "$16::int[], $17::text[], $18::float8[], $19::text[]) "
                "as t(e, r, m, v, va, pn, pv, it, ot, pt, ct, c, cu, l, rf, g, o, a, em) "
                "on conflict (event_id) do nothing returning seq, event_id",
                [g.event_id for g in rows], [g.request_id for g in rows], [g.model for g in rows],
                [g.version for g in rows], [g.variant for g in rows], [g.prompt_name for g in rows],
                [g.prompt_version for g in rows], [g.input_text for g in rows], [g.output_text for g in rows],
                [g.prompt_tokens for g in rows], [g.completion_tokens for g in rows], [g.cost for g in rows],
                [g.currency for g in rows], [g.latency_ms for g in rows], [g.refused for g in rows],
                [g.guardrail_hits for g in rows], [g.outcome for g in rows], [g.at for g in rows],
                [_array(g.embedding) for g in rows])
            seqs = {r["event_id"]: r["seq"] for r in added}
            joined = await conn.fetch(
                "update feedback f set generation_seq = g.seq from generations g "
                "where g.seq = any($1::bigint[]) and f.request_id = g.request_id and f.generation_seq is null "
                "and not f.dead returning g.model_name, g.model_version", list(seqs.values()))
        return ([(g, seqs[g.event_id]) for g in rows if g.event_id in seqs],
                [(r["model_name"], r["model_version"]) for r in joined])

    async def add_feedback(self, event_id: str, request_id: str, model: str, kind: str, score: float,
                           correction: str, rater: str, raw: bytes, key: bytes | None,
                           topic: str) -> tuple[bool, tuple[str, int] | None]:
        """Keep a rating and join it to its generation: (new, the generation's (model, version) when joined).
        A repeat of an event id is not new and changes nothing."""
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval(
                "insert into feedback(event_id, request_id, model_name, kind, score, correction, rater, raw, key, "
                "topic) values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) on conflict do nothing returning true",
                event_id, request_id, model, kind, score, correction, rater, raw, key, topic)
            if not new:
                return False, None
            row = await conn.fetchrow(
                "update feedback f set generation_seq = g.seq from (select seq, model_name, model_version from "
                "generations where request_id = $2 order by seq limit 1) g where f.event_id = $1 "
                "returning g.model_name, g.model_version", event_id, request_id)
        return True, ((row["model_name"], row["model_version"]) if row else None)

    async def expired_feedback(self, ttl_s: float, limit: int = 500) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(
            "select event_id, request_id, raw, key, topic from feedback where generation_seq is null and not dead "
            "and received_at < now() - make_interval(secs => $1) order by received_at limit $2", ttl_s, limit))

    async def mark_dead(self, event_ids: list[str]) -> None:
        await self.pool.execute("update feedback set dead = true where event_id = any($1::text[])", event_ids)

    async def quality(self, model: str, version: int) -> dict[str, float]:
        """Per-version feedback figures: ratings joined, thumbs-up rate, mean score (0..1), corrections."""
        r = await self.pool.fetchrow(
            "select count(*) as rated, "
            "avg(case when f.score > 0 then 1.0 else 0.0 end) filter (where f.kind = 'thumbs') as thumbs_up_rate, "
            "avg(f.score) filter (where f.kind = 'score') as mean_score, "
            "count(*) filter (where f.kind = 'correction') as corrections "
            "from feedback f join generations g on g.seq = f.generation_seq "
            "where g.model_name = $1 and g.model_version = $2", model, version)
        return {k: float(r[k]) for k in ("rated", "thumbs_up_rate", "mean_score", "corrections") if r[k] is not None}

    async def reference(self, model: str, version: int, size: int) -> list[GenRow]:
        """A version's first ``size`` generations (its text reference), oldest first."""
        rows = await self.pool.fetch(f"select {_GEN} from generations where model_name=$1 "  # noqa: S608
                                     f"and model_version=$2 order by seq limit $3", model, version, size)
        return [_gen(r) for r in rows]

    async def newest(self, model: str, version: int, last: int, after_seq: int) -> list[GenRow]:
        """The newest ``last`` generations of a version after ``after_seq``, oldest first."""
        rows = await self.pool.fetch(f"select {_GEN} from generations where model_name=$1 "  # noqa: S608
                                     f"and model_version=$2 and seq > $3 order by seq desc limit $4",
                                     model, version, after_seq, last)
        return [_gen(r) for r in reversed(rows)]

    async def costs_since(self, model: str, since_at: float) -> list[tuple[float, float]]:
        rows = await self.pool.fetch("select at, cost from generations where model_name=$1 and at >= $2 "
                                     "order by at", model, since_at)
        return [(r["at"], r["cost"]) for r in rows]
