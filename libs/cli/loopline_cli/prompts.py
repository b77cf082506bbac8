"""`loopline prompt ...`: prompt templates as versioned registry artifacts.

A version is immutable and named by its content: creating the same template, model binding and
sampling parameters again returns the existing version. Aliases (production, candidate, any
lowercase name) move by compare-and-set with ``--expect``, and every move is kept in the history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from loopline.registry.v1 import registry_pb2 as pb
from rich.console import Console
from rich.table import Table

from loopline_cli.models import Actor, AsJson, Reason, Registry, _actor, _json, _run

prompt_app = typer.Typer(help="Prompts in the registry: create, list, get, alias, history.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _template(value: str) -> str:
    """A file's text when ``value`` names a file, else ``value`` itself. A value that looks like a
    path but names no file is refused, so a typo is not stored as a one-line template."""
    path = Path(value)
    try:
        if len(value) < 4096 and path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:
        pass
    if "{{" not in value and not any(ch.isspace() for ch in value) and ("/" in value or path.suffix):
        err.print(f"[bold red]error:[/] no such template file: {value}")
        raise typer.Exit(2)
    return value


def _show(p: pb.PromptVersion) -> None:
    bound = f"{p.model_name} v{p.model_version}" if p.model_version else f"{p.model_name} (champion)"
    console.print(f"[bold]{p.name} v{p.version}[/]  aliases {', '.join(p.aliases) or '-'}  model {bound}  "
                  f"digest {p.digest[:12]}  by {p.author or '-'} at {p.created_at.ToJsonString()}")
    console.print(f"variables: {', '.join(p.variables) or '-'}  sampling: {p.sampling_parameters}")
    if p.description:
        console.print(f"description: {p.description}")
    console.print(p.template, markup=False, highlight=False)


@prompt_app.command("create")
def create(name: str,
           template: Annotated[str, typer.Option("--template", help="the template's file, or its text; "
                                                 "variables are written {{name}}")],
           model: Annotated[str, typer.Option("--model", help="the model the prompt is written for")],
           model_version: Annotated[int, typer.Option("--model-version", help="the LLM version it was validated "
                                                      "with (0: whichever is champion)")] = 0,
           sampling: Annotated[str, typer.Option("--sampling", help='default sampling parameters, a JSON object '
                                                 '(vLLM names: {"temperature": 0, "max_tokens": 64})')] = "{}",
           description: Annotated[str, typer.Option("--description")] = "",
           alias: Annotated[str, typer.Option("--alias", help="then point this alias at the version")] = "",
           registry: Registry = "", actor: Actor = "", as_json: AsJson = False) -> None:
    """Store a template as the prompt's next version (the same content returns the existing one)."""
    who = _actor(actor)
    request = pb.PromptVersion(name=name, template=_template(template), model_name=model, model_version=model_version,
                               sampling_parameters=sampling, description=description, author=who)
    p, created = _run(registry, lambda c: c.create_prompt(request))
    if alias:
        p, _ = _run(registry, lambda c: c.set_prompt_alias(name, alias, p.version, actor=who,
                                                           reason=f"created v{p.version}"))
    if as_json:
        typer.echo(json.dumps({"created": created, "prompt": json.loads(_json(p))}))
        return
    console.print(f"{name} v{p.version} {'created' if created else 'exists already (same content)'}"
                  f"{f'; {alias} -> v{p.version}' if alias else ''}  variables: {', '.join(p.variables) or '-'}")


@prompt_app.command("list")
def list_versions(name: str, registry: Registry = "", as_json: AsJson = False) -> None:
    """Every version of a prompt, oldest first, with its aliases and model binding."""
    versions = _run(registry, lambda c: c.prompt_versions(name))
    if as_json:
        typer.echo(json.dumps([json.loads(_json(p)) for p in versions]))
        return
    t = Table("version", "aliases", "model", "variables", "sampling", "digest", "author", "description")
    for p in versions:
        t.add_row(f"v{p.version}", ", ".join(p.aliases) or "-",
                  f"{p.model_name} v{p.model_version}" if p.model_version else p.model_name,
                  ", ".join(p.variables) or "-", p.sampling_parameters, p.digest[:12], p.author, p.description)
    console.print(t)


@prompt_app.command("get")
def get(name: str, version: Annotated[int, typer.Option("--version", help="this version")] = 0,
        alias: Annotated[str, typer.Option("--alias", help="the version this alias points at")] = "",
        registry: Registry = "", as_json: AsJson = False) -> None:
    """One version (by --version or --alias; neither: the newest) with its template."""
    p = _run(registry, lambda c: c.get_prompt(name, version, alias))
    if as_json:
        typer.echo(_json(p))
        return
    _show(p)


@prompt_app.command("alias")
def set_alias(name: str, alias: str, version: int,
              expect: Annotated[int | None, typer.Option("--expect", help="compare-and-set: the version you "
                                                         "believe holds the alias now (0: none)")] = None,
              reason: Reason = "", registry: Registry = "", actor: Actor = "") -> None:
    """Point an alias (production, candidate, ...) at a version; refused (ABORTED) on a stale --expect."""
    p, previous = _run(registry, lambda c: c.set_prompt_alias(name, alias, version, actor=_actor(actor),
                                                              reason=reason, expected=expect))
    console.print(f"{name} {alias}: v{previous or '-'} -> v{p.version}")


@prompt_app.command("history")
def history(name: str, alias: Annotated[str, typer.Option(help="one alias; default all")] = "",
            registry: Registry = "", as_json: AsJson = False) -> None:
    """Who moved which alias, when, why, from and to; newest first."""
    changes = _run(registry, lambda c: c.prompt_history(name, alias))
    if as_json:
        typer.echo(json.dumps([json.loads(_json(c)) for c in changes]))
        return
    t = Table("when", "alias", "move", "actor", "reason")
    for c in changes:
        t.add_row(c.at.ToJsonString(), c.alias, f"v{c.from_version or '-'} -> v{c.to_version}", c.actor, c.reason)
    console.print(t)
