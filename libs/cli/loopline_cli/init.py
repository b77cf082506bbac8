"""``loopline init``: what a deployment needs once before its services start (the compose file's ``init``).

Idempotent, so a re-run (``docker compose up`` again, a Kubernetes Job retried) changes nothing that exists:

* the buckets (``loopline-raw``, ``-datasets``, ``-models``, ``-reports``) in the S3 store;
* the platform topics (``TopicNamer.platform_topics``) with the given partition count;
* a first signing key pair: the private key and its ``current`` pointer under ``--signing-dir`` (the
  trainer's alone), the public key under ``<secrets-dir>/trusted`` (every reader's);
* bearer tokens, one per service and one for operators: ``<secrets-dir>/auth/tokens`` (``<client> <token>``
  lines, what the servers check, ``LOOPLINE_AUTH_TOKENS_FILE``) and ``<secrets-dir>/auth/<client>.token``
  (what each client sends, ``LOOPLINE_AUTH_TOKEN_FILE``), all 0600. Existing tokens are kept.

Connections come from the usual ``LOOPLINE_*`` variables. No secret value is printed.
``python -m loopline_cli.init`` runs it without the rest of the CLI (the init image carries only this).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
from loopline_core.auth import ensure_tokens
from loopline_core.kafka import TopicNamer, ensure_topics
from loopline_core.objstore import BUCKETS, ObjectStore
from loopline_core.settings import CoreSettings, load
from loopline_core.signing import init_keys


def _say(message: str) -> None:
    typer.echo(f"loopline-init: {message}", err=True)


async def _buckets(store: ObjectStore, deadline: float) -> None:
    while True:
        try:
            for bucket in BUCKETS:
                await store.ensure_bucket(bucket)
        except Exception as exc:  # noqa: BLE001 - an edge: any failure of a store that is still starting is retried
            if time.monotonic() > deadline:
                raise SystemExit(f"loopline-init: the S3 store did not create the buckets: {exc}") from None
            await asyncio.sleep(1.0)
        else:
            return


async def _topics(bootstrap: str, names: list[str], partitions: int, deadline: float) -> None:
    while True:
        try:
            await ensure_topics(bootstrap, names, partitions=partitions)
        except Exception as exc:  # noqa: BLE001 - an edge: a broker that is still electing its controller is retried
            if time.monotonic() > deadline:
                raise SystemExit(f"loopline-init: the broker did not create the topics: {exc}") from None
            await asyncio.sleep(1.0)
        else:
            return


def init_command(
        signing_dir: Annotated[Path, typer.Option("--signing-dir", help="the trainer's private key directory "
                                                  "(LOOPLINE_SIGNING_KEY is its `current`)")],
        secrets_dir: Annotated[Path, typer.Option("--secrets-dir", help="readers' trusted keys (trusted/) and the "
                                                  "auth tokens (auth/)")],
        model: Annotated[list[str] | None, typer.Option("--model", help="a model whose topics to create "
                                                        "[default: fraud]")] = None,
        llm: Annotated[list[str] | None, typer.Option("--llm", help="an LLM whose topics to create "
                                                      "[default: tiny-llama]")] = None,
        partitions: Annotated[int, typer.Option(help="partitions of each new topic")] = 3,
        timeout: Annotated[float, typer.Option(help="seconds to wait for the broker and the store")] = 120.0,
) -> None:
    """Create the buckets, the topics, a first signing key and the auth tokens (each only if missing)."""
    settings = load(CoreSettings, "init")
    deadline = time.monotonic() + timeout
    key = init_keys(signing_dir, secrets_dir / "trusted")
    _say(f"signing key ready ({key.path}; trusted keys in {secrets_dir / 'trusted'})")
    new = ensure_tokens(secrets_dir / "auth")
    _say(f"auth tokens ready in {secrets_dir / 'auth'} ({len(new)} new)")
    store = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value(),
                        region=settings.s3_region)
    asyncio.run(_buckets(store, deadline))
    _say(f"buckets ready: {', '.join(BUCKETS)}")
    topics = TopicNamer(settings.topic_prefix).platform_topics(
        tuple(settings.datasets), tuple(model or ["fraud"]), tuple(llm or ["tiny-llama"]))
    asyncio.run(_topics(settings.kafka_bootstrap, topics, partitions, deadline))
    _say(f"{len(topics)} topics ready ({partitions} partitions each when new)")


if __name__ == "__main__":
    typer.run(init_command)
