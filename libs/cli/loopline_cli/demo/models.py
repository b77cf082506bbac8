"""The report's model section: each version's gate evidence, metrics per slice against the champion,
exports, provenance and model card, and the alias history, all read back from the registry and the
object store (what an ML engineer would look at, not what the demo remembers)."""

from __future__ import annotations

import html
from typing import Any

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import LooplineError
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient, stage_name
from loopline_ml.store import split_uri

METRICS = ("auc_roc", "auc_pr", "recall_at_fpr", "log_loss", "calibration_error")


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(d: dict[str, float], key: str) -> str:
    return f"{d[key]:.3f}" if key in d else "-"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border='1' cellpadding='3' style='border-collapse:collapse'><tr>{th}</tr>{body}</table>"


def _gate(v: pb.ModelVersion) -> str:
    if not v.HasField("gate"):
        return "<p>gate: <b>no evidence</b> (never eligible for champion)</p>"
    g = v.gate
    verdict = "<b style='color:green'>PASS</b>" if g.passed else "<b style='color:red'>FAIL</b>"
    against = f" against champion v{g.champion_version}" if g.champion_version else " (no champion to compare)"
    rows = [[_e(c.metric), _e(c.slice or "all"), _e(c.kind), f"{c.value:.4f}", f"{c.baseline:.4f}",
             f"{c.threshold:+.4f}", "yes" if c.passed else "<b style='color:red'>no</b>", _e(c.detail)]
            for c in g.checks]
    return (f"<p>gate: {verdict}{against} - {_e(g.summary)}</p>"
            + _table(["metric", "slice", "kind", "value", "champion", "threshold", "passed", "detail"], rows))


def _slices(v: pb.ModelVersion) -> str:
    if not v.slices:
        return ""
    rows = []
    for s in v.slices:
        m, c = dict(s.metrics), dict(s.champion_metrics)
        rows.append([_e(s.slice or "all"), str(s.rows), str(s.positives),
                     *(f"{_num(m, k)} / {_num(c, k)}" for k in METRICS)])
    return "<p>holdout metrics, this version / champion on the same rows:</p>" + _table(
        ["slice", "rows", "positives", *METRICS], rows)


def _exports(v: pb.ModelVersion) -> str:
    items = "".join(f"<li>{_e(e.format)} (opset {e.opset}, signed by {_e(e.signer_key_id)}): {_e(e.uri)} - "
                    + ", ".join(f"{_e(k)} {x:.4f}" for k, x in sorted(e.metrics.items())) + "</li>"
                    for e in v.exports)
    return f"<ul>{items}</ul>" if items else ""


def _run(v: pb.ModelVersion) -> str:
    r = v.run
    return (f"<p>provenance: run {_e(r.run_id)}, git {_e(r.git_commit[:12])}{' (dirty)' if r.git_dirty else ''}, "
            f"lock {_e(r.lock_hash[:12])}, python {_e(r.python_version)}, torch {_e(r.torch_version)}, "
            f"numpy {_e(r.numpy_version)}, {_e(r.device)}, seed {r.seed}, training set {_e(r.dataset_digest[:12])} "
            f"({_e(r.feature_view)}) as of {_e(r.dataset_as_of.ToJsonString())}, {len(r.trajectory)} epochs in "
            f"{r.wall_time_s:.1f}s, artifact {_e(r.artifact_digest[:12])}</p>")


async def _card(objects: ObjectStore, uri: str) -> str:
    if not uri:
        return "<p>no model card</p>"
    bucket, key = split_uri(uri)
    md_key = key.rsplit(".", 1)[0] + ".md"
    try:
        text = (await objects.get_bytes(bucket, md_key)).decode()
    except Exception as exc:  # noqa: BLE001 - a missing card is reported in the page, not fatal
        return f"<p>model card {_e(uri)} could not be read: {_e(exc)}</p>"
    return f"<details><summary>model card ({_e(uri)})</summary><pre>{_e(text)}</pre></details>"


async def section(registry_addr: str, objects: ObjectStore, model: str) -> tuple[str, dict[str, Any]]:
    """The HTML section and a summary per version (gate verdict, overall and per-slice AUC)."""
    client = RegistryClient(registry_addr)
    try:
        versions = await client.versions(model, include_deleted=True)
        history = await client.history(model)
    except LooplineError as exc:
        return f"<h2>Model versions</h2><p>registry unavailable: {_e(exc)}</p>", {}
    finally:
        await client.close()
    parts = ["<h2>Model versions: gate evidence, slices, model cards</h2>"]
    summary: dict[str, Any] = {}
    for v in versions:
        parts.append(f"<h3>{_e(model)} v{v.version} - {_e(stage_name(v.stage))}"
                     f"{' - ' + _e(', '.join(v.aliases)) if v.aliases else ''}</h3>")
        parts += [_gate(v), _slices(v), _exports(v), _run(v), await _card(objects, v.model_card_uri)]
        summary[f"v{v.version}"] = {
            "stage": stage_name(v.stage), "gate": ("pass" if v.gate.passed else "fail") if v.HasField("gate") else "-",
            "slices": {s.slice or "all": {"rows": s.rows, "auc_roc": dict(s.metrics).get("auc_roc"),
                                          "champion_auc_roc": dict(s.champion_metrics).get("auc_roc")}
                       for s in v.slices}}
    rows = [[_e(c.at.ToJsonString()), _e(c.alias), f"v{c.from_version or '-'} &rarr; v{c.to_version or '-'}",
             _e(c.action), _e(c.actor), _e(c.reason), _e(c.override_reason or "-")] for c in history]
    parts.append("<h3>Alias history (newest first)</h3>"
                 + _table(["when", "alias", "move", "action", "actor", "reason", "override"], rows))
    return "".join(parts), summary
