"""``loopline keys``: list, rotate and revoke the keys that sign model artifacts.

Two directories, both plain files, so rotation needs no restart of anything:

* the private key directory (the trainer's): ``<key_id>.key``/``.pub`` and ``current``, naming the
  key the trainer signs the next model with;
* the trusted directory (every reader's: inference, monitor, the trainer's champion check):
  ``<key_id>.pub`` for each accepted key, and ``revoked``, one key id a line.

By default both come from the running local stack (``loopline stack env``); ``--private-dir`` and
``--trusted-dir`` name others (a deployment's mounted secrets, say).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from loopline_core.errors import LooplineError
from loopline_core.signing import POINTER, current_key_id, key_id, read_revoked, revoke, rotate
from rich.console import Console
from rich.table import Table

PROCEDURE = """\
Rotating: `loopline keys rotate` makes a new key pair, adds its public key to the trusted directory,
and only then points `current` at it, so no model is signed by a key its readers do not trust yet.
The trainer signs its next model with the new key; models signed with the old key keep verifying.
Readers notice the new trusted key at their next verification; nothing restarts.

Retiring the old key: once every model you still serve is signed by the new key (re-train or re-sign
them), `loopline keys revoke <old-id>`. A revoked key's signatures are refused (refusal
"revoked_key", an ArtifactRefused alert) even while its .pub is still in the trusted directory.
If a key leaked, rotate first and revoke at once: models it signed are refused, services keep
serving what they loaded before.
"""

keys_app = typer.Typer(help="Signing keys: list, rotate, revoke.\n\n" + PROCEDURE, no_args_is_help=True)
console = Console()
err = Console(stderr=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="the local stack whose keys these are "
                                               "[env LOOPLINE_STACK_DIR, default .loopline/stack]")]
PrivateDir = Annotated[Path | None, typer.Option("--private-dir", help="the trainer's key directory "
                                                 "(default: the running stack's)")]
TrustedDir = Annotated[Path | None, typer.Option("--trusted-dir", help="the readers' trusted key directory "
                                                 "(default: the running stack's)")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _dirs(state_dir: Path | None, private_dir: Path | None, trusted_dir: Path | None) -> tuple[Path, Path]:
    """The two key directories: the flags, else the running stack's environment."""
    if private_dir is None or trusted_dir is None:
        from loopline_stack import Stack  # noqa: PLC0415 - only when no directory was named
        from loopline_stack.stack import StackConfig  # noqa: PLC0415

        state = Stack(StackConfig.from_env(state_dir)).state()
        if state is None or "LOOPLINE_SIGNING_KEY" not in state.env:
            _fail("no running stack to take the key directories from: `loopline stack up`, or name them with "
                  "--private-dir and --trusted-dir", 2)
            raise AssertionError  # unreachable: _fail raises
        signing = Path(state.env["LOOPLINE_SIGNING_KEY"])
        if signing.name != POINTER:
            err.print(f"[yellow]warning:[/] the stack's LOOPLINE_SIGNING_KEY names a fixed key file ({signing}), "
                      f"not a `{POINTER}` pointer: a rotation reaches the trainer only when it signs through one")
        private_dir = private_dir or signing.parent
        trusted_dir = trusted_dir or Path(state.env["LOOPLINE_TRUSTED_KEYS_DIR"])
    return private_dir, trusted_dir


@dataclass
class KeyRow:
    key_id: str
    trusted: bool
    revoked: bool
    current: bool
    private_key: bool
    created: str


def _ids_in(directory: Path, pattern: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        try:
            out[key_id(p.read_bytes())] = p
        except (OSError, ValueError):
            err.print(f"[yellow]warning:[/] {p} is not a readable public key; skipped")
    return out


def key_rows(private_dir: Path, trusted_dir: Path) -> list[KeyRow]:
    """Every key either directory knows of, newest first."""
    private = _ids_in(private_dir, "*.pub")
    trusted = _ids_in(trusted_dir, "*.pub")
    revoked = read_revoked(trusted_dir)
    current = current_key_id(private_dir) if (private_dir / POINTER).exists() else None
    rows = []
    for kid in set(private) | set(trusted) | revoked:
        path = private.get(kid) or trusted.get(kid)
        created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M") if path else ""
        rows.append(KeyRow(kid, kid in trusted, kid in revoked, kid == current,
                           kid in private and (private_dir / f"{kid}.key").is_file(), created))
    return sorted(rows, key=lambda r: (r.created, r.key_id), reverse=True)


def _yes(flag: bool, style: str = "green") -> str:
    return f"[{style}]yes[/]" if flag else "[dim]no[/]"


@keys_app.command("list")
def list_keys(state_dir: StateDir = None, private_dir: PrivateDir = None, trusted_dir: TrustedDir = None,
              as_json: AsJson = False) -> None:
    """Show each key: id, trusted by readers?, revoked?, current (what the trainer signs with)?"""
    priv, trusted = _dirs(state_dir, private_dir, trusted_dir)
    rows = key_rows(priv, trusted)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
        return
    table = Table(title=f"signing keys ({priv} / {trusted})")
    table.add_column("key id", no_wrap=True, min_width=16)
    for name in ("trusted", "revoked", "current", "private key"):
        table.add_column(name, no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    for r in rows:
        table.add_row(r.key_id, _yes(r.trusted), _yes(r.revoked, "red"), _yes(r.current, "bold cyan"),
                      _yes(r.private_key), r.created)
    console.print(table)
    if not any(r.current for r in rows):
        err.print("[yellow]warning:[/] no current signing key: `loopline keys rotate` makes one")
    for r in rows:
        if r.current and (r.revoked or not r.trusted):
            err.print(f"[bold red]warning:[/] the current key {r.key_id} is "
                      f"{'revoked' if r.revoked else 'not trusted'}: readers will refuse new models")


@keys_app.command("rotate", help="Make a new signing key, trust it, then make it current.\n\n" + PROCEDURE)
def rotate_key(state_dir: StateDir = None, private_dir: PrivateDir = None, trusted_dir: TrustedDir = None,
               as_json: AsJson = False) -> None:
    priv, trusted = _dirs(state_dir, private_dir, trusted_dir)
    old = current_key_id(priv) if (priv / POINTER).exists() else None
    new = rotate(priv, trusted)
    if as_json:
        typer.echo(json.dumps({"previous": old, "current": new}))
        return
    console.print(f"[green]rotated[/]: the trainer now signs with [bold]{new}[/]"
                  + (f" (was {old}, still trusted)" if old else ""))
    if old:
        console.print(f"when no model you serve is signed by {old} any more: `loopline keys revoke {old}`")


@keys_app.command("revoke")
def revoke_key(key_id_: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key to refuse from now on")],
               state_dir: StateDir = None, private_dir: PrivateDir = None, trusted_dir: TrustedDir = None,
               reason: Annotated[str, typer.Option("--reason", help="why (kept as a comment in `revoked`)")] = "",
               force: Annotated[bool, typer.Option("--force", help="revoke even the current signing key")] = False,
               ) -> None:
    """Refuse every artifact signed by KEY_ID from now on (appended to the trusted dir's `revoked`).

    Revoking the key the trainer signs with now is refused unless --force: every model it trained
    next would be refused by inference and the monitor. Rotate first, then revoke the old key.
    """
    priv, trusted = _dirs(state_dir, private_dir, trusted_dir)
    current = current_key_id(priv) if (priv / POINTER).exists() else None
    if key_id_ == current and not force:
        _fail(f"{key_id_} is the current signing key: the trainer's next models would be refused everywhere. "
              "Run `loopline keys rotate` first, then revoke it (or pass --force if it leaked and no new model "
              "must be accepted until you rotate)")
    known = {r.key_id for r in key_rows(priv, trusted)}
    try:
        added = revoke(trusted, key_id_, reason)
    except LooplineError as exc:
        _fail(exc.message, 2)
        return
    if not added:
        console.print(f"{key_id_} was already revoked")
        return
    console.print(f"[red]revoked[/] {key_id_}: its signatures are refused from the readers' next verification")
    if key_id_ not in known:
        err.print(f"[yellow]note:[/] {key_id_} is not a key in {priv} or {trusted}; revoked all the same")
    if key_id_ == current:
        err.print("[bold red]warning:[/] that was the current signing key: `loopline keys rotate` now")
