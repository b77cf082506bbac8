"""``loopline contracts``: the data contracts under ``contracts/`` and whether a proposed one may replace them.

Reads only ``LOOPLINE_CONTRACTS_DIR`` (default: the repository's ``contracts/``), so a producer can
check a contract without any of the connection variables services need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from loopline_core.contracts import Contract, ContractError, Contracts, compatible, load_file
from loopline_core.errors import LooplineError
from loopline_core.settings import CoreSettings
from rich.console import Console
from rich.table import Table

contracts_app = typer.Typer(help="Data contracts: list, show, check a proposed one.", no_args_is_help=True)
out = Console(soft_wrap=True)

Dir = Annotated[Path | None, typer.Option("--dir", help="the contracts directory [env LOOPLINE_CONTRACTS_DIR, "
                                                         "default: the repository's contracts/]")]


def _dir(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("LOOPLINE_CONTRACTS_DIR")
    default: Path = CoreSettings.model_fields["contracts_dir"].default
    return Path(env) if env else default


def _load(directory: Path | None) -> Contracts:
    try:
        return Contracts.load(_dir(directory))
    except ContractError as exc:
        typer.echo(f"error: {exc}")
        raise typer.Exit(1) from None


@contracts_app.command("list")
def list_contracts(directory: Dir = None) -> None:
    """Every dataset's majors, newest first, and every file refused (with its reason)."""
    contracts = _load(directory)
    table = Table("contract", "version", "accepted until", "entity", "event time", "protobuf", "unknown fields",
                  "cap (bytes)")
    for dataset in contracts.datasets():
        for c in contracts.all(dataset):
            table.add_row(c.ref, c.version, c.accept_until.isoformat() if c.accept_until else "-", c.entity_field,
                          f"{c.event_time_field} ({c.ts_unit})", c.message_type or "-", c.unknown_fields,
                          str(c.max_payload_bytes))
    out.print(table)
    for reason in contracts.refused.values():
        typer.echo(f"refused: {reason}")


@contracts_app.command("show")
def show(dataset: str, version: Annotated[int | None, typer.Option("--version", help="the major (default: the "
                                                                                    "newest)")] = None,
         directory: Dir = None) -> None:
    """Print a contract file (JSON Schema 2020-12 with its x-loopline annotations)."""
    contracts = _load(directory)
    try:
        contract = contracts.current(dataset) if version is None else contracts.get(dataset, version)
    except LooplineError as exc:
        typer.echo(f"error: {exc.message}")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(contract.schema, indent=2))


@contracts_app.command("check")
def check(file: Path, directory: Dir = None) -> None:
    """Whether a proposed contract file may serve: exit 0 when it is compatible with the current one
    of its major (or starts a new major or dataset), 1 with one line per reason when not."""
    try:
        proposed = load_file(file)
    except ContractError as exc:
        typer.echo(f"refused: {exc}")
        raise typer.Exit(1) from None
    contracts = _load(directory)
    if proposed.dataset not in contracts.datasets():
        typer.echo(f"new dataset {proposed.ref} ({proposed.version})")
        return
    current = contracts.current(proposed.dataset)
    same: Contract | None = next((c for c in contracts.all(proposed.dataset) if c.major == proposed.major), None)
    if same is None and proposed.major > current.major:
        typer.echo(f"new major {proposed.ref} ({proposed.version}) beside {current.ref} ({current.version}); "
                   f"both are accepted until {current.ref} sets accept_until")
        return
    base = same or current
    reasons = compatible(base, proposed)
    if reasons:
        typer.echo(f"incompatible with {base.ref} ({base.version} -> {proposed.version}); a change like this "
                   f"needs a new major (v{current.major + 1}):")
        for reason in reasons:
            typer.echo(reason)
        raise typer.Exit(1)
    typer.echo(f"compatible with {base.ref} ({base.version} -> {proposed.version})")
