"""LLM fixtures: the tiny Llama (built once per machine, cached by content hash) and its registration.

Import what a module needs (``from loopline_testing.llm import tiny_llm``); building the model takes about a
minute the first time, so only the modules that serve an LLM pay for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loopline.registry.v1 import registry_pb2
from loopline_core.objstore import ObjectStore
from loopline_core.signing import SigningKey
from loopline_llm.publish import register_llm
from loopline_llm.tiny import cached

LLM = "tiny-llama"


@pytest.fixture(scope="session")
def tiny_llm() -> Path:
    """The tiny Llama's Hugging Face directory."""
    return cached()


async def register_tiny(env: dict[str, str], registry_addr: str, model_dir: Path, *, model_name: str = LLM,
                        alias: str = "champion", key: SigningKey | None = None) -> registry_pb2.ModelVersion:
    """Sign ``model_dir`` with the stack's key (or ``key``), upload it and register it as ``model_name``."""
    private = Path(env["LOOPLINE_SIGNING_KEY"])
    key = key or SigningKey(private, private.with_suffix(".pub"))
    objects = ObjectStore(env["LOOPLINE_S3_ENDPOINT"], env["LOOPLINE_S3_ACCESS_KEY"], env["LOOPLINE_S3_SECRET_KEY"])
    return await register_llm(objects, key, registry_addr, model_name, model_dir, alias=alias)
