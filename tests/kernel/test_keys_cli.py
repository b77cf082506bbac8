"""`loopline keys list|rotate|revoke` on key directories of their own, checked by signing and verifying."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loopline_cli.app import app
from loopline_core.errors import LooplineError
from loopline_core.signing import SigningKey, TrustStore, init_keys, sign_dir
from loopline_stack.stack import StackState
from typer.testing import CliRunner


def _keys(private: Path, trusted: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["keys", *args, "--private-dir", str(private), "--trusted-dir", str(trusted)])


def _text(result: Any) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _listed(private: Path, trusted: Path) -> dict[str, dict[str, Any]]:
    out = _keys(private, trusted, "list", "--json")
    assert out.exit_code == 0, out.output
    return {row["key_id"]: row for row in json.loads(out.stdout)}


def _signed(tmp_path: Path, name: str, key: SigningKey) -> tuple[Path, Path, str]:
    model = tmp_path / name
    model.mkdir()
    (model / "weights.bin").write_bytes(name.encode() * 500)
    sig = tmp_path / f"{name}.sig"
    return model, sig, sign_dir(model, key, sig)


def test_rotate_then_revoke_the_old_key(tmp_path: Path) -> None:
    private, trusted = tmp_path / "private", tmp_path / "trusted"
    trainer = init_keys(private, trusted)
    reader = TrustStore.from_dir(trusted)
    model_a, sig_a, old = _signed(tmp_path, "a", trainer)

    rotated = _keys(private, trusted, "rotate", "--json")
    assert rotated.exit_code == 0, rotated.output
    moved = json.loads(rotated.stdout)
    assert moved["previous"] == old and moved["current"] not in {old, None}
    new = moved["current"]
    rows = _listed(private, trusted)
    assert rows[old] == {**rows[old], "trusted": True, "revoked": False, "current": False, "private_key": True}
    assert rows[new] == {**rows[new], "trusted": True, "revoked": False, "current": True}

    model_b, sig_b, signed_by = _signed(tmp_path, "b", trainer)
    assert signed_by == new, "the trainer's key follows the rotation without being rebuilt"
    reader.verify(model_a, sig_a, old)
    reader.verify(model_b, sig_b, new)

    refused = _keys(private, trusted, "revoke", new)
    assert refused.exit_code == 1
    assert "current signing key" in _text(refused) and "rotate" in _text(refused)
    assert not (trusted / "revoked").exists()

    revoked = _keys(private, trusted, "revoke", old, "--reason", "rotated out")
    assert revoked.exit_code == 0, revoked.output
    assert _listed(private, trusted)[old]["revoked"] is True
    with pytest.raises(LooplineError) as info:
        reader.verify(model_a, sig_a, old)
    assert info.value.details["refusal"] == "revoked_key"
    reader.verify(model_b, sig_b, new)

    again = _keys(private, trusted, "revoke", old)
    assert again.exit_code == 0 and "already revoked" in _text(again)
    assert (trusted / "revoked").read_text().count(old) == 1


def test_revoking_the_current_key_takes_force_and_a_list_shows_the_damage(tmp_path: Path) -> None:
    private, trusted = tmp_path / "private", tmp_path / "trusted"
    current = init_keys(private, trusted).key_id
    forced = _keys(private, trusted, "revoke", current, "--force")
    assert forced.exit_code == 0, forced.output
    assert "rotate" in _text(forced)
    listed = _keys(private, trusted, "list")
    assert listed.exit_code == 0
    assert current in listed.output and "readers will refuse new models" in _text(listed)
    assert _keys(private, trusted, "revoke", "zz").exit_code == 2


def test_without_a_stack_or_directories_it_says_what_to_do(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["keys", "list", "--state-dir", str(tmp_path / "none")])
    assert out.exit_code == 2
    assert "--private-dir" in _text(out)


def test_the_running_stack_provides_the_directories(stack: StackState) -> None:
    out = CliRunner().invoke(app, ["keys", "list", "--json", "--state-dir", stack.state_dir])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    current = SigningKey(Path(stack.env["LOOPLINE_SIGNING_KEY"])).key_id
    assert [r["key_id"] for r in rows if r["current"]] == [current]
    assert all(r["trusted"] and not r["revoked"] for r in rows)
