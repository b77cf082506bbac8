"""`loopline model ...`: read and move models in the registry, as an ML engineer or an SRE would.

Every move is audited by the registry (who, when, why, from -> to); promote, rollback and approve
take ``--expected`` for compare-and-set, so a move made on stale information is refused (ABORTED,
naming the current holder) instead of silently undoing someone else's.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf import json_format
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import LooplineError
from loopline_core.registry import RegistryClient, stage_name
from rich.console import Console
from rich.table import Table

model_app = typer.Typer(help="Models in the registry: list, show, history, lineage, promote, rollback, approve, "
                        "retire.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

Registry = Annotated[str, typer.Option("--registry", envvar="LOOPLINE_REGISTRY_ADDR",
                                       help="the registry's gRPC address (host:port)")]
Actor = Annotated[str, typer.Option("--actor", envvar="LOOPLINE_ACTOR", help="who is moving it (kept in the audit)")]
Reason = Annotated[str, typer.Option("--reason", help="why (kept in the audit)")]
Expected = Annotated[int | None, typer.Option("--expected", help="compare-and-set: the version you believe holds "
                                              "the alias now (0: none); refused if it does not")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _actor(actor: str) -> str:
    if actor:
        return actor
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "cli"


def _run(registry: str, call: Callable[[RegistryClient], Awaitable[T]]) -> T:
    if not registry:
        err.print("[bold red]error:[/] say where the registry is: --registry host:port or LOOPLINE_REGISTRY_ADDR")
        raise typer.Exit(2)

    async def go() -> T:
        client = RegistryClient(registry)
        try:
            return await call(client)
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except LooplineError as exc:
        holder = exc.details.get("current_version")
        hint = f" (the alias is held by v{holder})" if holder is not None else ""
        err.print(f"[bold red]error:[/] {exc.kind.value}: {exc.message}{hint}")
        raise typer.Exit(1) from None


def _json(message: Any) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1)


def _gate(v: pb.ModelVersion) -> str:
    if not v.HasField("gate"):
        return "none"
    return ("pass" if v.gate.passed else "FAIL") + (f" vs v{v.gate.champion_version}" if v.gate.champion_version
                                                     else "")


@model_app.command("list")
def list_models(model: Annotated[str, typer.Argument(help="a model: list its versions")] = "",
                registry: Registry = "", as_json: AsJson = False) -> None:
    """Every model with its aliases, or every version of one model."""
    if not model:
        models = _run(registry, lambda c: c.models())
        if as_json:
            typer.echo(json.dumps([json.loads(_json(m)) for m in models]))
            return
        t = Table("model", "aliases", "latest", "approval", "description")
        for m in models:
            t.add_row(m.name, ", ".join(f"{a}=v{v}" for a, v in sorted(m.aliases.items())) or "-",
                      f"v{m.latest_version}" if m.latest_version else "-",
                      "required" if m.requires_approval else "-", m.description)
        console.print(t)
        return
    versions = _run(registry, lambda c: c.versions(model, include_deleted=True))
    if as_json:
        typer.echo(json.dumps([json.loads(_json(v)) for v in versions]))
        return
    t = Table("version", "stage", "aliases", "gate", "auc_roc", "auc_pr", "rows", "run")
    for v in versions:
        vm = dict(v.metrics)
        t.add_row(f"v{v.version}", stage_name(v.stage), ", ".join(v.aliases) or "-", _gate(v),
                  f"{vm['auc_roc']:.3f}" if "auc_roc" in vm else "-", f"{vm['auc_pr']:.3f}" if "auc_pr" in vm else "-",
                  str(int(vm.get("test_rows", 0))) or "-", v.run_id[:12])
    console.print(t)


@model_app.command("show")
def show(model: str, version: int, registry: Registry = "", as_json: AsJson = False) -> None:
    """One version: stage, gate evidence, metrics per slice, exports, provenance, model card."""
    v = _run(registry, lambda c: c.get(model, version))
    if as_json:
        typer.echo(_json(v))
        return
    console.print(f"[bold]{v.model_name} v{v.version}[/]  stage {stage_name(v.stage)}  aliases "
                  f"{', '.join(v.aliases) or '-'}  card {v.model_card_uri or '-'}")
    if v.HasField("gate"):
        console.print(f"gate: {'[green]pass[/]' if v.gate.passed else '[red]FAIL[/]'} - {v.gate.summary}")
        t = Table("metric", "slice", "kind", "value", "baseline", "threshold", "ok", "detail")
        for c in v.gate.checks:
            t.add_row(c.metric, c.slice or "all", c.kind, f"{c.value:.4f}", f"{c.baseline:.4f}",
                      f"{c.threshold:+.4f}", "yes" if c.passed else "[red]no[/]", c.detail)
        console.print(t)
    if v.slices:
        t = Table("slice", "rows", "positives", "auc_roc", "champion auc_roc", "auc_pr", "champion auc_pr")
        for s in v.slices:
            mine, champ = dict(s.metrics), dict(s.champion_metrics)
            t.add_row(s.slice or "all", str(s.rows), str(s.positives), *(
                f"{d[k]:.3f}" if k in d else "-" for d, k in ((mine, "auc_roc"), (champ, "auc_roc"),
                                                               (mine, "auc_pr"), (champ, "auc_pr"))))
        console.print(t)
    for e in v.exports:
        console.print(f"export {e.format}: {e.uri} (opset {e.opset}, key {e.signer_key_id}) "
                      + ", ".join(f"{k}={x:.4f}" for k, x in sorted(e.metrics.items())))
    r = v.run
    console.print(f"run {r.run_id}: git {r.git_commit[:12]}{' (dirty)' if r.git_dirty else ''}, seed {r.seed}, "
                  f"torch {r.torch_version}, data {r.dataset_digest[:12]} as of {r.dataset_as_of.ToJsonString()}, "
                  f"{len(r.trajectory)} epochs in {r.wall_time_s:.1f}s")


@model_app.command("history")
def history(model: str, alias: Annotated[str, typer.Option(help="one alias; default all")] = "",
            limit: Annotated[int, typer.Option(help="newest N; 0: all")] = 0, registry: Registry = "",
            as_json: AsJson = False) -> None:
    """Who moved which alias, when, why, from and to, with the evidence; newest first."""
    changes = _run(registry, lambda c: c.history(model, alias, limit))
    if as_json:
        typer.echo(json.dumps([json.loads(_json(c)) for c in changes]))
        return
    t = Table("when", "alias", "move", "action", "actor", "reason", "override")
    for c in changes:
        t.add_row(c.at.ToJsonString(), c.alias, f"v{c.from_version or '-'} -> v{c.to_version or '-'}", c.action,
                  c.actor, c.reason, c.override_reason or "-")
    console.print(t)


@model_app.command("lineage")
def lineage(model: str, version: int, registry: Registry = "") -> None:
    """Raw archive window -> training-set snapshot -> run -> version -> alias moves, as JSON."""
    typer.echo(_json(_run(registry, lambda c: c.lineage(model, version))))


@model_app.command("promote")
def promote(model: str, version: int, reason: Reason, alias: Annotated[str, typer.Option()] = "champion",
            expected: Expected = None,
            override: Annotated[str, typer.Option(help="promote although the gate failed or approval is missing: "
                                                  "the reason is recorded")] = "",
            registry: Registry = "", actor: Actor = "") -> None:
    """Point an alias at a version (the registry refuses a failed gate unless --override says why)."""
    v, previous = _run(registry, lambda c: c.set_alias(model, alias, version, actor=_actor(actor), reason=reason,
                                                       expected=expected, override_reason=override))
    console.print(f"{model} {alias}: v{previous or '-'} -> v{v.version} ({stage_name(v.stage)})")


@model_app.command("rollback")
def rollback(model: str, reason: Reason, alias: Annotated[str, typer.Option()] = "champion",
             expected: Expected = None, registry: Registry = "", actor: Actor = "") -> None:
    """Move an alias back to the version that held it before its current holder."""
    v, previous = _run(registry, lambda c: c.rollback(model, alias, actor=_actor(actor), reason=reason,
                                                      expected=expected))
    console.print(f"{model} {alias}: v{previous} -> v{v.version} (rolled back)")


@model_app.command("approve")
def approve(model: str, version: int, reason: Reason, expected: Expected = None, registry: Registry = "",
            actor: Actor = "") -> None:
    """Approve a staged version: it becomes champion."""
    v, previous = _run(registry, lambda c: c.approve(model, version, actor=_actor(actor), reason=reason,
                                                     expected_champion=expected))
    console.print(f"{model} v{v.version} approved; champion: v{previous or '-'} -> v{v.version}")


@model_app.command("retire")
def retire(model: str, version: int, reason: Reason, registry: Registry = "", actor: Actor = "") -> None:
    """Retire a version for good: never served again, cannot get an alias."""
    v = _run(registry, lambda c: c.set_stage(model, version, "retired", actor=_actor(actor), reason=reason))
    console.print(f"{model} v{v.version}: {stage_name(v.stage)}")


# The retrainer's actor name on the alias moves its rollouts make (kept in the registry's audit).
ROLLOUT_ACTOR = "retrainer-rollout"


@model_app.command("rollout")
def rollout(model: str, registry: Registry = "", as_json: AsJson = False) -> None:
    """The rollout and variant policies, the arms (champion, challenger) and the last rollout step, as the
    registry's audit has it (the retrainer's alias moves, each with its reason and evidence)."""

    async def read(c: RegistryClient) -> tuple[pb.Model, list[pb.AliasChange]]:
        return await c.model(model), await c.history(model)

    m, changes = _run(registry, read)
    last = next((c for c in changes if c.alias == "challenger" or c.actor == ROLLOUT_ACTOR), None)
    arms = {alias: m.aliases[alias] for alias in ("champion", "challenger") if alias in m.aliases}
    if as_json:
        typer.echo(json.dumps({"rollout": json.loads(_json(m.rollout)), "variants": json.loads(_json(m.variants)),
                               "arms": arms, "last": json.loads(_json(last)) if last is not None else None}))
        return
    r = m.rollout
    console.print(f"[bold]{model}[/] rollout: {r.mode or 'direct'}"
                  + (f", {r.canary_share:.0%} of traffic sticky by {r.sticky_by or 'entity'}" if r.mode == "canary"
                     else "")
                  + f"; alpha {r.alpha or 0.05:g}, min {r.min_samples} rows per arm, latency budget "
                    f"{r.latency_budget_ms:g} ms, {r.min_duration_s:g}s..{r.max_duration_s or float('inf'):g}s")
    v = m.variants
    console.print(f"variants: {v.default_variant or 'torch'}"
                  + (f", {v.fast_variant} under {v.fast_budget_ms:g} ms" if v.fast_variant else ""))
    console.print("arms: " + (", ".join(f"{a} v{n}" for a, n in arms.items()) or "none"))
    if last is None:
        console.print("no rollout yet")
        return
    step = ("started" if last.alias == "challenger" and last.action == "set" else
            "promoted" if last.alias == "champion" or last.reason.startswith("promoted") else
            "rolled back" if last.reason.startswith("rolled back") else "ended")
    console.print(f"last: {step} at {last.at.ToJsonString()} (v{last.from_version or '-'} -> "
                  f"v{last.to_version or '-'} {last.alias}, {last.action} by {last.actor}): {last.reason}")
