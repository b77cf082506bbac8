"""The LLM demo's HTML report: cost over time against the budget, requests by outcome, guardrail hits, tokens,
prompt versions, the monitor's alerts and the preference export."""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import plotly.graph_objects as go


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def write_report(result: dict[str, Any], out_dir: Path) -> Path:
    gens = result["generations"]
    outcomes = Counter(g.outcome for g in gens)
    hits = Counter(hit for g in gens for hit in {(h.stage, h.action) for h in g.guardrails})
    versions = Counter((g.prompt_name, g.prompt_version) for g in gens if g.prompt_name)
    tokens_in = sum(g.prompt_tokens for g in gens)
    tokens_out = sum(g.completion_tokens for g in gens)
    cost = sum(g.cost for g in gens)
    currency = next((g.currency for g in gens if g.currency), "USD")
    ttft = sorted(g.ttft_ms for g in gens if g.outcome == "ok")
    p50 = ttft[len(ttft) // 2] if ttft else 0.0

    fig = go.Figure()
    if result["cost_points"]:
        xs, ys = zip(*result["cost_points"], strict=True)
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), name=f"spend ({currency})", mode="lines"))
    fig.add_vline(x=result["shifted_at_s"], line_dash="dot", annotation_text="topic shift")
    fig.update_layout(title="cumulative token cost (from the Generation events)", xaxis_title="seconds into traffic",
                      yaxis_title=currency, height=360, margin={"t": 50, "b": 40})

    alerts = [[a.kind, a.severity, f"v{a.model_version}", a.summary[:160]] for a in result["alerts"]]
    export = result.get("export") or {}
    parts = [
        "<h1>Loopline LLM demo</h1>",
        f"<p>{len(gens)} requests logged; {outcomes.get('ok', 0)} answered, {outcomes.get('blocked', 0)} blocked by "
        f"a guardrail; {tokens_in:,} prompt and {tokens_out:,} completion tokens; spend {cost:.4f} {currency}; "
        f"median time to first token {p50:.0f} ms. Every text below the API was PII-redacted before it was "
        "logged or published.</p>",
        "<h2>Timeline</h2>", _table(["s", "what happened"], [[t, m] for t, m in result["timeline"]]),
        fig.to_html(full_html=False, include_plotlyjs="cdn"),
        "<h2>Requests by outcome</h2>", _table(["outcome", "requests"], [[k, n] for k, n in sorted(outcomes.items())]),
        "<h2>Guardrail hits</h2>", _table(["stage", "action", "requests"],
                                          [[s, a, n] for (s, a), n in sorted(hits.items())]),
        "<h2>Prompt versions served</h2>", _table(["prompt", "version", "requests"],
                                                  [[p, v, n] for (p, v), n in sorted(versions.items())]),
        "<h2>Monitor alerts</h2>", _table(["kind", "severity", "version", "summary"], alerts) if alerts else
        "<p>none</p>",
        "<h2>Preference dataset (from feedback)</h2>", f"<pre>{html.escape(json.dumps(export, indent=2, default=str))}"
        "</pre>",
    ]
    style = "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style>"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"loopline-llm-demo-{time.strftime('%Y%m%dT%H%M%S')}.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>{''.join(parts)}"
                    "</body></html>")
    return path
