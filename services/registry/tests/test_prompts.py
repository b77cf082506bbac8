"""Prompts as versioned registry artifacts, against the real registry process and Postgres, over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.registry import RegistryClient
from loopline_ml import prompt
from loopline_stack.services import ServiceSet

TEMPLATE = "You answer support tickets.\nTicket: {{ ticket }}\nTone: {{tone}}\nAnswer:"


def _version(model: str, run_id: str, flavor: str) -> pb.ModelVersion:
    return pb.ModelVersion(model_name=model, artifact_uri=f"s3://loopline-models/{model}/{run_id}/model",
                           signature_uri=f"s3://loopline-models/{model}/{run_id}/model.sig", signer_key_id="k1",
                           dataset_digest="d" * 64, run_id=run_id, flavor=flavor)


def _prompt(template: str = TEMPLATE, *, model: str = "tiny-llama", model_version: int = 0,
            sampling: str = '{"temperature": 0, "max_tokens": 16}', **kw: object) -> pb.PromptVersion:
    return pb.PromptVersion(name="support", template=template, model_name=model, model_version=model_version,
                            sampling_parameters=sampling, **kw)  # type: ignore[arg-type]


async def _refused(call: object, kind: ErrorKind, *words: str) -> LooplineError:
    with pytest.raises(LooplineError) as err:
        await call  # type: ignore[misc]
    assert err.value.kind is kind, err.value
    for w in words:
        assert w in err.value.message, err.value.message
    return err.value


async def test_create_dedupe_concurrency_and_refusals(services: Callable[..., ServiceSet]) -> None:
    client = RegistryClient(services("registry").addr("registry"))
    try:
        llm = await client.register(_version("tiny-llama", "llm-1", "llm"))
        mlp = await client.register(_version("fraud", "mlp-1", ""))
        assert llm.flavor == "llm" and mlp.flavor == "", "a version's flavor is stored and read back"

        p1, created = await client.create_prompt(_prompt(author="alice", description="first",
                                                         sampling='{ "max_tokens": 16, "temperature": 0 }'))
        assert created and p1.version == 1 and list(p1.variables) == ["ticket", "tone"]
        assert p1.sampling_parameters == '{"max_tokens":16,"temperature":0}', "stored in canonical form"
        assert p1.digest == prompt.digest(TEMPLATE, "tiny-llama", 0, p1.sampling_parameters)
        assert p1.author == "alice" and p1.created_at.seconds > 0 and list(p1.aliases) == []

        again, created = await client.create_prompt(_prompt(description="same content, other words"))
        assert not created and again.version == 1 and again.description == "first", "same digest: same version"

        # concurrent creates of one new content: exactly one version, every caller gets it
        racing = _prompt(TEMPLATE + " ", model_version=llm.version)
        results = await asyncio.gather(*(client.create_prompt(racing) for _ in range(8)))
        assert {p.version for p, _ in results} == {2} and sum(c for _, c in results) == 1

        p3, created = await client.create_prompt(_prompt(sampling='{"temperature": 0.7}', variables=["tone", "ticket"]))
        assert created and p3.version == 3, "other sampling parameters are other content"
        assert [p.version for p in await client.prompt_versions("support")] == [1, 2, 3]

        bad = [
            (_prompt("Ticket: {{ticket}"), ErrorKind.INVALID_ARGUMENT, ("unbalanced",)),
            (_prompt("   "), ErrorKind.INVALID_ARGUMENT, ("empty",)),
            (_prompt(sampling="temperature=0"), ErrorKind.INVALID_ARGUMENT, ("not JSON",)),
            (_prompt(sampling="[1, 2]"), ErrorKind.INVALID_ARGUMENT, ("JSON object",)),
            (_prompt(sampling='{"temperature": NaN}'), ErrorKind.INVALID_ARGUMENT, ("finite",)),
            (_prompt(variables=["ticket"]), ErrorKind.INVALID_ARGUMENT, ("not listed: tone",)),
            (_prompt(model=""), ErrorKind.INVALID_ARGUMENT, ("model",)),
            (pb.PromptVersion(name="Bad Name", template="x", model_name="tiny-llama"), ErrorKind.INVALID_ARGUMENT,
             ("prompt name",)),
            (_prompt(model="no-such-model"), ErrorKind.FAILED_PRECONDITION, ("no-such-model", "not in the registry")),
            (_prompt(model="tiny-llama", model_version=9), ErrorKind.FAILED_PRECONDITION, ("v9 is not registered",)),
            (_prompt(model="fraud", model_version=mlp.version), ErrorKind.FAILED_PRECONDITION, ("not an LLM",)),
            (_prompt(model="fraud"), ErrorKind.FAILED_PRECONDITION, ("no LLM version",)),
        ]
        for request, kind, words in bad:
            await _refused(client.create_prompt(request), kind, *words)
        assert len(await client.prompt_versions("support")) == 3, "a refused create stores nothing"
    finally:
        await client.close()


async def test_aliases_history_and_reads(services: Callable[..., ServiceSet]) -> None:
    client = RegistryClient(services("registry").addr("registry"))
    try:
        await client.register(_version("tiny-llama", "llm-1", "llm"))
        for i in range(3):
            await client.create_prompt(_prompt(f"{TEMPLATE} #{i}"))

        await _refused(client.get_prompt("support", alias="production"), ErrorKind.NOT_FOUND, "production")
        await _refused(client.get_prompt("support", version=7), ErrorKind.NOT_FOUND, "version 7")
        await _refused(client.get_prompt("nothing"), ErrorKind.NOT_FOUND, "nothing", "does not exist")
        await _refused(client.prompt_versions("nothing"), ErrorKind.NOT_FOUND, "nothing")
        await _refused(client.get_prompt("support", version=1, alias="production"), ErrorKind.INVALID_ARGUMENT)
        await _refused(client.get_prompt("support", alias="Prod!"), ErrorKind.INVALID_ARGUMENT)
        await _refused(client.set_prompt_alias("support", "latest", 1, actor="a", reason="r"),
                       ErrorKind.INVALID_ARGUMENT, "reserved")
        await _refused(client.set_prompt_alias("support", "production", 9, actor="a", reason="r"),
                       ErrorKind.NOT_FOUND, "version 9")

        p, previous = await client.set_prompt_alias("support", "production", 1, actor="alice", reason="first",
                                                    expected=0)
        assert (p.version, previous, list(p.aliases)) == (1, 0, ["production"])
        await client.set_prompt_alias("support", "candidate", 2, actor="bob", reason="try v2")
        stale = await _refused(client.set_prompt_alias("support", "production", 2, actor="carol", reason="stale",
                                                       expected=3), ErrorKind.ABORTED, "held by v1")
        assert stale.details["current_version"] == "1"
        p, previous = await client.set_prompt_alias("support", "production", 2, actor="carol", reason="v2 won",
                                                    expected=1)
        assert (p.version, previous, list(p.aliases)) == (2, 1, ["candidate", "production"])
        _, previous = await client.set_prompt_alias("support", "production", 2, actor="carol", reason="retry",
                                                    expected=1)
        assert previous == 2, "moving an alias to its holder is a no-op (a retried call after its answer was lost)"

        assert (await client.get_prompt("support", alias="production")).version == 2
        assert (await client.get_prompt("support", version=1)).aliases == []
        latest = await client.get_prompt("support")
        assert latest.version == 3 and latest.template.endswith("#2")
        listed = {p.version: list(p.aliases) for p in await client.prompt_versions("support")}
        assert listed == {1: [], 2: ["candidate", "production"], 3: []}

        changes = await client.prompt_history("support")
        assert [(c.alias, c.from_version, c.to_version, c.actor, c.reason) for c in changes] == [
            ("production", 1, 2, "carol", "v2 won"), ("candidate", 0, 2, "bob", "try v2"),
            ("production", 0, 1, "alice", "first")], "newest first, who, why, from and to"
        assert all(c.at.seconds > 0 for c in changes)
        assert [c.to_version for c in await client.prompt_history("support", "production")] == [2, 1]
        await _refused(client.prompt_history("nothing"), ErrorKind.NOT_FOUND)
    finally:
        await client.close()
