"""`loopline prompt ...` as a prompt engineer would run it, against the real registry process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.registry import RegistryClient
from loopline_stack.services import ServiceSet

LOOPLINE = str(Path(sys.executable).parent / "loopline")


async def _cli(*args: str, registry: str = "") -> tuple[int, str, str]:
    env_args = ["--registry", registry] if registry else []
    env = {k: v for k, v in os.environ.items() if k != "LOOPLINE_REGISTRY_ADDR"}
    proc = await asyncio.create_subprocess_exec(LOOPLINE, "prompt", *args, *env_args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**env, "COLUMNS": "200"})
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), " ".join(err.decode().split())


async def test_create_list_get_alias_history_from_the_command_line(
        services: Callable[..., ServiceSet], tmp_path: Path) -> None:
    reg = services("registry").addr("registry")
    client = RegistryClient(reg)
    try:
        llm = await client.register(pb.ModelVersion(
            model_name="tiny-llama", artifact_uri="s3://loopline-models/tiny-llama/r1/model",
            signature_uri="s3://loopline-models/tiny-llama/r1/model.sig", signer_key_id="k1", run_id="r1",
            flavor="llm"))
    finally:
        await client.close()
    template = tmp_path / "support.txt"
    template.write_text("Ticket: {{ticket}}\nAnswer politely:", encoding="utf-8")

    code, out, err = await _cli("create", "support", "--template", str(template), "--model", "tiny-llama",
                                "--model-version", str(llm.version), "--sampling", '{"temperature": 0}',
                                "--alias", "production", "--actor", "alice", "--json", registry=reg)
    assert code == 0, err
    made = json.loads(out)
    assert made["created"] and made["prompt"]["version"] == "1" and made["prompt"]["aliases"] == ["production"]
    assert made["prompt"]["variables"] == ["ticket"] and made["prompt"]["author"] == "alice"

    code, out, _ = await _cli("create", "support", "--template", str(template), "--model", "tiny-llama",
                              "--model-version", str(llm.version), "--sampling", '{ "temperature": 0 }', registry=reg)
    assert code == 0 and "v1 exists already" in out, out

    code, out, _ = await _cli("create", "support", "--template", "Ticket: {{ticket}} (short)", "--model",
                              "tiny-llama", registry=reg)
    assert code == 0 and "v2 created" in out, out

    code, _, err = await _cli("create", "support", "--template", "Ticket: {{ticket", "--model", "tiny-llama",
                              registry=reg)
    assert code == 1 and "INVALID_ARGUMENT" in err and "unbalanced" in err, err
    code, _, err = await _cli("create", "support", "--template", str(tmp_path / "typo.txt"), "--model", "tiny-llama",
                              registry=reg)
    assert code == 2 and "no such template file" in err, err
    code, _, err = await _cli("create", "support", "--template", "x", "--model", "nope", registry=reg)
    assert code == 1 and "FAILED_PRECONDITION" in err and "nope" in err, err

    code, _, err = await _cli("alias", "support", "production", "2", "--expect", "2", registry=reg)
    assert code == 1 and "ABORTED" in err and "held by v1" in err, err
    code, out, err = await _cli("alias", "support", "production", "2", "--expect", "1", "--reason", "shorter",
                                "--actor", "bob", registry=reg)
    assert code == 0 and "v1 -> v2" in out, err

    code, out, _ = await _cli("get", "support", "--alias", "production", "--json", registry=reg)
    assert code == 0 and json.loads(out)["template"] == "Ticket: {{ticket}} (short)"
    code, out, _ = await _cli("get", "support", "--version", "1", registry=reg)
    assert code == 0 and "Answer politely:" in out and "{{ticket}}" in out, out
    code, _, err = await _cli("get", "support", "--alias", "candidate", registry=reg)
    assert code == 1 and "NOT_FOUND" in err and "candidate" in err, err

    code, out, _ = await _cli("list", "support", "--json", registry=reg)
    assert [(p["version"], p.get("aliases", [])) for p in json.loads(out)] == [("1", []), ("2", ["production"])]
    code, out, _ = await _cli("list", "support", registry=reg)
    assert code == 0 and "production" in out

    code, out, _ = await _cli("history", "support", "--json", registry=reg)
    assert [(c["alias"], c.get("from_version", "0"), c["to_version"], c["actor"], c["reason"])
            for c in json.loads(out)] == [("production", "1", "2", "bob", "shorter"),
                                          ("production", "0", "1", "alice", "created v1")]

    code, _, err = await _cli("list", "support")
    assert code == 2 and "--registry" in err, "no address: a clear error, not a stack trace"
