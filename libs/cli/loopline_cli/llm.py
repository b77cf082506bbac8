"""`loopline llm ...`: build the tiny Llama, register an LLM directory, export preference data."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from loopline_core.errors import LooplineError
from rich.console import Console

from loopline_cli.preferences import export_preferences_command

llm_app = typer.Typer(help="LLMs: build the tiny Llama, register an LLM, export preference data.",
                      no_args_is_help=True)
llm_app.command("export-preferences")(export_preferences_command)
console = Console()
err = Console(stderr=True)


@llm_app.command("build-tiny")
def build_tiny(out: Annotated[Path | None, typer.Option(help="write it here (default: the content-hash cache)")] = None,
               ) -> None:
    """Train the tiny Llama (a BPE tokenizer and a small Llama) on the shipped support corpus."""
    from loopline_llm.tiny import build, cached  # noqa: PLC0415

    if out is not None:
        figures = build(out)
        console.print(f"built {out}: {figures}")
        return
    path = cached(progress=console.print)
    console.print(str(path))


@llm_app.command("register")
def register(model_dir: Annotated[Path, typer.Argument(help="a Hugging Face causal-LM directory")],
             model: Annotated[str, typer.Option(help="the model name")] = "tiny-llama",
             alias: Annotated[str, typer.Option(help="the alias to point at it ('' for none)")] = "champion",
             registry: Annotated[str, typer.Option(envvar="LOOPLINE_REGISTRY_ADDR")] = "",
             ) -> None:
    """Sign the directory with LOOPLINE_SIGNING_KEY, upload it to the object store and register it (flavor llm)."""
    from loopline_core.objstore import ObjectStore  # noqa: PLC0415
    from loopline_core.signing import SigningKey  # noqa: PLC0415
    from loopline_llm.publish import register_llm  # noqa: PLC0415

    try:
        private = Path(os.environ["LOOPLINE_SIGNING_KEY"])
        objects = ObjectStore(os.environ["LOOPLINE_S3_ENDPOINT"], os.environ["LOOPLINE_S3_ACCESS_KEY"],
                              os.environ["LOOPLINE_S3_SECRET_KEY"])
    except KeyError as e:
        err.print(f"[bold red]error:[/] {e.args[0]} is not set (run inside `loopline stack env` or export it)")
        raise typer.Exit(2) from None
    if not registry:
        err.print("[bold red]error:[/] say where the registry is: --registry host:port or LOOPLINE_REGISTRY_ADDR")
        raise typer.Exit(2)
    try:
        version = asyncio.run(register_llm(objects, SigningKey(private, private.with_suffix(".pub")), registry, model,
                                           model_dir, alias=alias))
    except LooplineError as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(1) from None
    console.print(f"registered {model} v{version.version} (aliases: {', '.join(version.aliases) or 'none'})")
