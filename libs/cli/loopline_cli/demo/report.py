"""The demo's HTML report: the monitor's drift and AUC over time, its alerts with Evidently's reports,
latency, the model timeline."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from loopline_cli.demo.observe import Observed
from loopline_cli.demo.traffic import TrafficStats


def monitor_series(seen: Observed, metric: str, *, labels: bool) -> dict[int, tuple[list[float], list[float]]]:
    """Per version, (window end, value) of the monitor's own evaluations: drift windows, or the performance
    windows of labelled predictions (``labels``), the version as a whole (no variant)."""
    out: dict[int, tuple[list[float], list[float]]] = {}
    for w in seen.evaluations:
        if w.window.startswith("labels:") != labels or w.variant or metric not in w.metrics:
            continue
        xs, ys = out.setdefault(w.model_version, ([], []))
        xs.append(w.window_end.ToNanoseconds() / 1e9)
        ys.append(w.metrics[metric])
    return out


def alerts_html(seen: Observed, rel: Callable[[float], float], links: dict[str, str]) -> str:
    """Every alert the monitor raised, with Evidently's report of the window that raised it."""
    if not seen.raised:
        return ""
    head = "<tr><th>kind</th><th>severity</th><th>version</th><th>repeat</th><th>window</th><th>summary</th>" \
           "<th>Evidently report</th></tr>"
    rows = []
    for a in seen.raised:
        link = links.get(a.report_uri, "")
        cell = f"<a href='{html.escape(link)}'>{html.escape(a.window)}</a>" if link else html.escape(a.report_uri)
        rows.append(f"<tr><td>{html.escape(a.kind)}</td><td>{html.escape(a.severity)}</td><td>v{a.model_version}</td>"
                    f"<td>{a.repeat}</td><td>{rel(a.window_end.ToNanoseconds() / 1e9):.0f}s</td>"
                    f"<td>{html.escape(a.summary)}</td><td>{cell}</td></tr>")
    return f"<h2>Alerts</h2><table border='1' cellpadding='3'>{head}{''.join(rows)}</table>"


def rollouts_html(seen: Observed, rel: Callable[[float], float]) -> str:
    """Each rollout decision with the sequential test's evidence per watched rate."""
    if not seen.rollouts:
        return ""
    head = ("<tr><th>decision</th><th>challenger</th><th>champion</th><th>mode</th><th>after</th><th>signal</th>"
            "<th>challenger events/n</th><th>champion events/n</th><th>LR worse</th><th>LR not worse</th>"
            "<th>threshold</th><th>verdict</th></tr>")
    rows = []
    for r in seen.rollouts:
        lead = (f"<td>{html.escape(r.decision)}</td><td>v{r.challenger_version}</td><td>v{r.champion_version}</td>"
                f"<td>{html.escape(r.mode)}</td><td>{r.elapsed_s:.0f}s</td>")
        for g in r.signals or [None]:
            cells = ("<td colspan='7'></td>" if g is None else
                     f"<td>{html.escape(g.name)}</td><td>{g.challenger_events}/{g.challenger_n}</td>"
                     f"<td>{g.champion_events}/{g.champion_n}</td><td>{g.worse_ratio:.3g}</td>"
                     f"<td>{g.not_worse_ratio:.3g}</td><td>{g.threshold:.3g}</td><td>{html.escape(g.verdict)}</td>")
            rows.append(f"<tr>{lead}{cells}</tr>")
            lead = "<td colspan='5'></td>"
        rows.append(f"<tr><td colspan='12'><i>{html.escape(r.reason)}</i></td></tr>")
    return f"<h2>Rollouts</h2><table border='1' cellpadding='3'>{head}{''.join(rows)}</table>"


def write(path: Path, stats: TrafficStats, seen: Observed, started: float, drift_at: float | None,
          summary: dict[str, Any], drift_share: float, models_html: str = "", links: dict[str, str] | None = None
          ) -> Path:
    fig = make_subplots(rows=4, cols=1, vertical_spacing=0.07, subplot_titles=(
        "Drift: share of drifted columns in the monitor's windows (Evidently's tests), by version",
        "Ranking quality from delayed labels: the monitor's rolling AUC per version (newest labelled predictions)",
        "ModelInfer latency seen by the client (tritonclient, gRPC round trip), ms",
        "Model timeline"))

    def rel(t: float) -> float:
        return t - started

    for version, (xs, ys) in sorted(monitor_series(seen, "drift_share", labels=False).items()):
        fig.add_trace(go.Scatter(x=[rel(x) for x in xs], y=ys, mode="lines+markers", name=f"drift share v{version}"),
                      row=1, col=1)
    fig.add_hline(y=drift_share, line_dash="dash", annotation_text="dataset drift", row=1, col=1)
    for version, (xs, ys) in sorted(monitor_series(seen, "auc_roc", labels=True).items()):
        fig.add_trace(go.Scatter(x=[rel(x) for x in xs], y=ys, mode="lines+markers", name=f"AUC v{version}"),
                      row=2, col=1)
    fig.add_trace(go.Scatter(x=[rel(s.at) for s in stats.scores], y=[s.latency_ms for s in stats.scores],
                             mode="markers", marker={"size": 3}, name="latency"), row=3, col=1)
    kinds = {"registered": 1, "trained": 2, "alert": 3, "promoted": 4, "alias": 4, "rollout": 4, "drift": 5}
    fig.add_trace(go.Scatter(x=[rel(m.at) for m in seen.timeline], y=[kinds.get(m.kind, 0) for m in seen.timeline],
                             mode="markers+text", text=[m.kind for m in seen.timeline], textposition="top center",
                             hovertext=[m.text for m in seen.timeline], name="events"), row=4, col=1)
    if drift_at:
        for row in (1, 2, 3, 4):
            fig.add_vline(x=rel(drift_at), line_dash="dot", line_color="red", row=row, col=1)
    fig.update_xaxes(title_text="seconds since the demo started")
    fig.update_layout(height=1400, showlegend=True, title="Loopline demo: the loop, turning")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    moments = "".join(f"<li><b>{rel(m.at):6.1f}s</b> {html.escape(m.text)}</li>" for m in seen.timeline)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Loopline demo report</title></head><body>"
            f"<h1>Loopline demo report</h1><p>{time.strftime('%Y-%m-%d %H:%M:%S')}</p><table>{rows}</table>"
            f"<h2>Timeline</h2><ol>{moments}</ol>{alerts_html(seen, rel, links or {})}{rollouts_html(seen, rel)}"
            f"{models_html}"
            f"{fig.to_html(full_html=False, include_plotlyjs='inline')}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
