"""``loopline llm export-preferences <model> <out>``: a preference dataset (prompt, chosen, rejected) from feedback.

Reads the monitor's joined generations and feedback from its Postgres schema (``LOOPLINE_POSTGRES_DSN``, as
the monitor itself; the monitor is the only service that keeps them) and writes a Parquet file plus a
manifest beside it (``<out>.manifest.json``: rows, the Parquet's sha256, schema, filters, created_at,
counts by source). Pairs:

- a correction: chosen = the correction, rejected = the generation's output (source "correction");
- among generations of the same prompt version and the same (redacted) input, a rated-good one against a
  rated-bad one: source "thumbs" when both verdicts came from thumbs, else "score". A generation's verdict
  is the sum of its votes: a thumb is +1/-1, a score >= ``high`` +1, <= ``low`` -1.

Only what the monitor stored is exported: inputs and outputs were redacted by inference before they were
logged. Corrections are stored as the feedback producer sent them (see the monitor's README).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import typer

SCHEMA = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
                    ("chosen_request_id", pa.string()), ("rejected_request_id", pa.string()),
                    ("chosen_model_version", pa.int64()), ("rejected_model_version", pa.int64()),
                    ("prompt_name", pa.string()), ("prompt_version", pa.int64()), ("source", pa.string())])
_QUERY = """
    select g.seq, g.request_id, g.model_version, g.prompt_name, g.prompt_version, g.input_text, g.output_text,
           f.kind, f.score, f.correction
    from monitor.feedback f join monitor.generations g on g.seq = f.generation_seq
    where g.model_name = $1 and g.outcome = 'ok' and ($2::float8 is null or g.at >= $2)
    order by g.seq, f.received_at, f.event_id
"""


@dataclass
class _Rated:
    request_id: str
    version: int
    prompt_name: str
    prompt_version: int
    prompt: str
    output: str
    votes: int = 0
    scored: bool = False
    """A score (not only thumbs) took part in its verdict."""


def pairs(rows: list[dict[str, Any]], *, high: float = 0.7, low: float = 0.3) -> list[dict[str, Any]]:
    """Preference rows from joined (generation, feedback) rows, in a deterministic order. Pure."""
    out: list[dict[str, Any]] = []
    rated: dict[int, _Rated] = {}
    for r in rows:
        g = rated.setdefault(r["seq"], _Rated(r["request_id"], r["model_version"], r["prompt_name"],
                                              r["prompt_version"], r["input_text"], r["output_text"]))
        if r["kind"] == "correction":
            if r["correction"].strip() and r["correction"] != r["output_text"]:
                out.append(_row(g, g, "correction", chosen=r["correction"]))
        elif r["kind"] == "thumbs":
            g.votes += 1 if r["score"] > 0 else -1 if r["score"] < 0 else 0
        elif r["kind"] == "score":
            g.votes += 1 if r["score"] >= high else -1 if r["score"] <= low else 0
            g.scored = True
    groups: dict[tuple[str, int, str], list[_Rated]] = defaultdict(list)
    for g in rated.values():
        if g.votes:
            groups[(g.prompt_name, g.prompt_version, g.prompt)].append(g)
    for members in groups.values():
        good = [g for g in members if g.votes > 0]
        bad = [g for g in members if g.votes < 0]
        out += [_row(c, r, "score" if c.scored or r.scored else "thumbs")
                for c in good for r in bad if c.output != r.output]
    out.sort(key=lambda x: (x["source"], x["prompt"], x["chosen_request_id"], x["rejected_request_id"]))
    return out


def _row(good: _Rated, bad: _Rated, source: str, *, chosen: str | None = None) -> dict[str, Any]:
    return {"prompt": bad.prompt, "chosen": good.output if chosen is None else chosen, "rejected": bad.output,
            "chosen_request_id": good.request_id, "rejected_request_id": bad.request_id,
            "chosen_model_version": good.version, "rejected_model_version": bad.version,
            "prompt_name": bad.prompt_name, "prompt_version": bad.prompt_version, "source": source}


async def read_joined(dsn: str, model: str, since: float | None) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(_QUERY, model, since)]
    finally:
        await conn.close()


def export_preferences(model: str, out: Path, since: float | None = None, *, dsn: str | None = None,
                       high: float = 0.7, low: float = 0.3) -> dict[str, Any]:
    """Write the preference Parquet of ``model`` (generations at or after ``since``, epoch seconds) to ``out`` and
    its manifest to ``<out>.manifest.json``; returns the manifest. (From async code: :func:`write_preferences`.)"""
    return asyncio.run(write_preferences(model, out, since, dsn=dsn, high=high, low=low))


async def write_preferences(model: str, out: Path, since: float | None = None, *, dsn: str | None = None,
                            high: float = 0.7, low: float = 0.3) -> dict[str, Any]:
    where = dsn or os.environ.get("LOOPLINE_POSTGRES_DSN", "")
    if not where:
        raise ValueError("LOOPLINE_POSTGRES_DSN is not set (the monitor's Postgres)")
    rows = pairs(await read_joined(where, model, since), high=high, low=low)
    filters = {"model": model, "since": since, "outcome": "ok", "score_high": high, "score_low": low}
    return await asyncio.to_thread(_write, model, out, rows, filters)


def _write(model: str, out: Path, rows: list[dict[str, Any]], filters: dict[str, Any]) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, out)
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["source"]] += 1
    manifest = {"model": model, "path": out.name, "rows": len(rows),
                "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                "schema": [{"name": f.name, "type": str(f.type)} for f in SCHEMA],
                "filters": filters,
                "counts": dict(sorted(counts.items())), "created_at": time.time(), "redacted": True}
    manifest_path(out).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def export_preferences_command(
        model: Annotated[str, typer.Argument(help="the LLM, e.g. tiny-llama")],
        out: Annotated[Path, typer.Argument(help="the Parquet file to write (manifest beside it)")],
        since: Annotated[float | None, typer.Option(help="only generations at or after this epoch second")] = None,
        high: Annotated[float, typer.Option(help="a score at or above this is a good answer")] = 0.7,
        low: Annotated[float, typer.Option(help="a score at or below this is a bad answer")] = 0.3) -> None:
    """Export MODEL's feedback as (prompt, chosen, rejected) pairs in Parquet, with a manifest."""
    try:
        manifest = export_preferences(model, out, since, high=high, low=low)
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"rows": manifest["rows"], "counts": manifest["counts"], "path": str(out),
                           "manifest": str(manifest_path(out))}))
