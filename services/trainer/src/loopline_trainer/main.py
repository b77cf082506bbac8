"""Composition root of the trainer: object store, signing key, registry and feature clients, consumer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loopline_core import runtime
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load
from loopline_core.signing import SigningKey, TrustStore

from loopline_trainer.adapters.clients import FeatureClient
from loopline_trainer.handlers.requests import TrainingHandler
from loopline_trainer.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "trainer")
    rt = await start_runtime("trainer", settings)
    private = Path(settings.signing_key)
    key = SigningKey(private, private.with_suffix(".pub"))
    trust = TrustStore.from_dir(Path(settings.trusted_keys_dir)) if settings.trusted_keys_dir else TrustStore(
        [key.public_key_path])
    registry = RegistryClient(settings.registry_addr, timeout_s=30)
    features = FeatureClient(settings.feature_addr)
    objects = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value())
    handler = TrainingHandler(registry, features, objects, key, trust, rt.publisher, rt.namer, settings.models_dir)
    rt.consumer([rt.namer.training_requests()], handler.decode, handler.on_training_requested, max_records=1)
    rt.closers += [registry.close, features.close]
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
