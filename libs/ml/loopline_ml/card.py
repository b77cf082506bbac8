"""Model cards: one JSON document per version (for tools) and its Markdown rendering (for people).

A card is built only from what the registry holds for the version (and the model's declared purpose),
so it can be rebuilt at any time and always agrees with the record.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict
from loopline.registry.v1 import registry_pb2 as pb

from loopline_ml.evaluation import LOWER_IS_BETTER, METRICS

_DATA_KEYS = ("dataset_rows", "dataset_positives", "train_rows", "validation_rows", "test_rows")


def build_card(v: pb.ModelVersion, model: pb.Model, limitations: list[str], *,
               min_slice_rows: int = 0) -> dict[str, Any]:
    r = v.run
    small = [s.slice for s in v.slices if s.slice and (s.rows < min_slice_rows or not 0 < s.positives < s.rows)]
    auto = []
    if small:
        auto.append(f"{len(small)} slices have fewer than {min_slice_rows} test rows or one class and were "
                    f"reported but not gated: {', '.join(small)}")
    if r.git_dirty:
        auto.append("trained from a working tree with uncommitted changes: the git commit alone does not "
                    "reproduce it")
    return {
        "model": v.model_name, "version": v.version, "run_id": v.run_id,
        "created_at": v.created_at.ToJsonString() if v.HasField("created_at") else "",
        "description": model.description, "intended_use": model.intended_use, "owner": model.owner,
        "data": {"snapshot_uri": r.dataset_uri, "digest": v.dataset_digest, "manifest_uri": r.dataset_manifest_uri,
                 "feature_view": r.feature_view, "as_of": r.dataset_as_of.ToJsonString(),
                 "window": {"from": r.data_from.ToJsonString(), "to": r.data_to.ToJsonString()},
                 "feature_names": list(v.feature_names),
                 **{k: int(v.metrics[k]) for k in _DATA_KEYS if k in v.metrics}},
        "metrics": {"overall": {k: v.metrics[k] for k in METRICS if k in v.metrics},
                    "champion": {k: v.metrics[f"champion_{k}"] for k in METRICS if f"champion_{k}" in v.metrics},
                    "lower_is_better": sorted(LOWER_IS_BETTER),
                    "slices": [MessageToDict(s, preserving_proto_field_name=True) for s in v.slices]},
        "gate": MessageToDict(v.gate, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        "lineage": MessageToDict(r, preserving_proto_field_name=True),
        "exports": [MessageToDict(e, preserving_proto_field_name=True) for e in v.exports],
        "artifact": {"uri": v.artifact_uri, "signature_uri": v.signature_uri, "signer_key_id": v.signer_key_id},
        "limitations": [*limitations, *auto],
    }


def _f(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else ("" if x is None else str(x))


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown: purpose, data, metrics vs champion (overall and per slice), gate, exports,
    lineage, limitations."""
    d, m, g, r = card["data"], card["metrics"], card["gate"], card["lineage"]
    out = [f"# Model card: {card['model']} v{card['version']}", "",
           card.get("description", ""), "", "## Intended use", "", card.get("intended_use", ""), "",
           f"Owner: {card.get('owner', '')}. Run `{card['run_id']}`, registered {card.get('created_at', '')}.", "",
           "## Data", "",
           f"- snapshot `{d['snapshot_uri']}` (sha256 `{d['digest']}`), feature view {d['feature_view']}, "
           f"as of {d['as_of']}",
           f"- events from {d['window']['from']} to {d['window']['to']}",
           f"- rows: {d.get('dataset_rows', '?')} ({d.get('dataset_positives', '?')} positive); train "
           f"{d.get('train_rows', '?')}, validation {d.get('validation_rows', '?')}, test {d.get('test_rows', '?')}",
           f"- features: {', '.join(d['feature_names'])}", "",
           "## Metrics on the test set (newest rows)", "",
           f"Lower is better for {', '.join(m['lower_is_better'])}; higher for the rest.", "",
           "| slice | rows | positives | " + " | ".join(f"{k} (champion)" for k in METRICS[:5]) + " |",
           "|---|---|---|" + "---|" * 5]
    for s in m["slices"]:
        cur, champ = s.get("metrics", {}), s.get("champion_metrics", {})
        cells = [f"{_f(cur.get(k))} ({_f(champ.get(k))})" if k in champ else _f(cur.get(k)) for k in METRICS[:5]]
        out.append(f"| {s.get('slice') or 'all'} | {s.get('rows', 0)} | {s.get('positives', 0)} | "
                   + " | ".join(cells) + " |")
    out += ["", f"## Gate: {'passed' if g.get('passed') else 'NOT passed'}", "", g.get("summary", ""), "",
            f"Rules digest `{g.get('config_digest', '')}`, champion v{g.get('champion_version', 0)}.", "",
            "| metric | slice | kind | value | champion | threshold | passed | detail |",
            "|---|---|---|---|---|---|---|---|"]
    for c in g.get("checks", []):
        out.append(f"| {c.get('metric', '')} | {c.get('slice') or 'all'} | {c.get('kind', '')} | "
                   f"{_f(c.get('value', 0.0))} | {_f(c.get('baseline', 0.0))} | {_f(c.get('threshold', 0.0))} | "
                   f"{'yes' if c.get('passed') else 'no'} | {c.get('detail', '')} |")
    out += ["", "## Exports", ""]
    for e in card["exports"]:
        mets = ", ".join(f"{k} {_f(x)}" for k, x in sorted(e.get("metrics", {}).items()))
        out.append(f"- {e.get('format')} (opset {e.get('opset', '')}, Triton model {e.get('triton_model_name', '')},"
                   f" signed by {e.get('signer_key_id', '')}): `{e.get('uri')}` — {mets}")
    traj = r.get("trajectory", [])
    last = traj[-1] if traj else {}
    out += ["", "## Lineage", "",
            f"- code: git `{r.get('git_commit', '')}`{' (dirty)' if r.get('git_dirty') else ''}, lock sha256 "
            f"`{r.get('lock_hash', '')}`",
            f"- python {r.get('python_version', '')}, torch {r.get('torch_version', '')}, numpy "
            f"{r.get('numpy_version', '')}, device {r.get('device', '')}",
            f"- seed {r.get('seed', 0)}, params {r.get('params', {})}",
            f"- {len(traj)} epochs, final loss {_f(last.get('loss'))}, validation loss "
            f"{_f(last.get('validation_loss'))}, {_f(r.get('wall_time_s', 0.0))} s",
            f"- request `{r.get('request_event_id', '')}` ({r.get('reason', '')}), artifact sha256 "
            f"`{r.get('artifact_digest', '')}`", "", "## Limitations", ""]
    out += [f"- {x}" for x in card["limitations"]] or ["- none recorded"]
    return "\n".join(out) + "\n"
