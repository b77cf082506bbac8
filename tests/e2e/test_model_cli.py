"""`loopline model ...` as an SRE would run it, against the real registry process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from loopline_stack.services import ServiceSet
from loopline_testing.builders import register_signed_model

LOOPLINE = str(Path(sys.executable).parent / "loopline")


async def _cli(*args: str, registry: str = "") -> tuple[int, str, str]:
    env_args = ["--registry", registry] if registry else []
    env = {k: v for k, v in os.environ.items() if k != "LOOPLINE_REGISTRY_ADDR"}
    proc = await asyncio.create_subprocess_exec(LOOPLINE, "model", *args, *env_args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env={**env, "COLUMNS": "200"})
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), " ".join(err.decode().split())


async def test_promote_rollback_history_retire_from_the_command_line(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    reg = services("registry").addr("registry")
    v1 = await register_signed_model(isolated, reg, "fraud", seed=1)
    v2 = await register_signed_model(isolated, reg, "fraud", seed=2, gate_champion=v1.version)
    v3 = await register_signed_model(isolated, reg, "fraud", seed=3, gate_passed=False, gate_champion=v1.version)

    code, out, _ = await _cli("promote", "fraud", str(v1.version), "--reason", "first", registry=reg)
    assert code == 0 and f"-> v{v1.version}" in out

    code, _, err = await _cli("promote", "fraud", str(v3.version), "--reason", "try", registry=reg)
    assert code == 1 and "FAILED_PRECONDITION" in err and "gate" in err, err

    code, _, err = await _cli("promote", "fraud", str(v2.version), "--reason", "stale view",
                              "--expected", str(v3.version), registry=reg)
    assert code == 1 and "ABORTED" in err and f"held by v{v1.version}" in err, err

    code, out, _ = await _cli("promote", "fraud", str(v2.version), "--reason", "better", "--expected",
                              str(v1.version), "--actor", "alice", registry=reg)
    assert code == 0 and f"v{v1.version} -> v{v2.version}" in out

    code, out, _ = await _cli("rollback", "fraud", "--reason", "alerts on v2", "--actor", "bob", registry=reg)
    assert code == 0 and f"v{v2.version} -> v{v1.version}" in out

    code, out, _ = await _cli("history", "fraud", "--json", registry=reg)
    changes = json.loads(out)
    assert [(c["action"], c.get("from_version", "0"), c["to_version"], c["actor"]) for c in changes] == [
        ("rollback", str(v2.version), str(v1.version), "bob"), ("set", str(v1.version), str(v2.version), "alice"),
        ("set", "0", str(v1.version), changes[2]["actor"])], "newest first, with who and from -> to"
    assert changes[0]["reason"] == "alerts on v2"

    code, out, _ = await _cli("retire", "fraud", str(v3.version), "--reason", "gate failed", registry=reg)
    assert code == 0 and "retired" in out
    code, _, err = await _cli("promote", "fraud", str(v3.version), "--reason", "force", "--override", "I insist",
                              registry=reg)
    assert code == 1 and "retired" in err, "an override passes a failed gate, never a retired version"

    code, out, _ = await _cli("list", "fraud", "--json", registry=reg)
    stages = {int(v["version"]): v.get("stage") for v in json.loads(out)}
    assert stages == {v1.version: "STAGE_PRODUCTION", v2.version: "STAGE_DEPRECATED", v3.version: "STAGE_RETIRED"}

    code, _, err = await _cli("list", "fraud")
    assert code == 2 and "--registry" in err, "no address: a clear error, not a stack trace"
