"""Composition root of the registry: settings -> runtime -> Postgres (+ outbox relay) -> gRPC server."""

from __future__ import annotations

import asyncio
import logging

from loopline.registry.v1 import registry_pb2_grpc
from loopline_core import runtime
from loopline_core.auth import ServerAuth
from loopline_core.db import create_pool, migrate
from loopline_core.grpcx import start_server
from loopline_core.outbox import Relay
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load

from loopline_registry.adapters.aliases import AliasStore
from loopline_registry.adapters.prompts import PromptStore
from loopline_registry.adapters.schema import MIGRATIONS, SCHEMA
from loopline_registry.adapters.store import RegistryStore
from loopline_registry.handlers.grpc import RegistryServicer
from loopline_registry.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "registry")
    auth = ServerAuth.from_settings(settings, "registry")  # before anything starts: a missing file is one line
    rt = await start_runtime("registry", settings)
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), SCHEMA)
    await migrate(pool, SCHEMA, MIGRATIONS)
    relay = Relay(pool, SCHEMA, rt.publisher, poll_interval_s=settings.outbox_poll_s)
    await relay.start()
    servicer = RegistryServicer(RegistryStore(pool, rt.namer), AliasStore(pool, rt.namer, settings.archive_root),
                                PromptStore(pool), relay, settings.outbox_flush_s)
    server, port = await start_server(
        [lambda s: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, s)], settings.registry_port,
        ["loopline.registry.v1.RegistryService"], host=settings.bind_host, auth=auth)
    logging.getLogger(__name__).info("serving", extra={"grpc_port": port})
    # run in reverse: finish the calls in flight, publish the events they wrote, then close the pool
    rt.closers += [pool.close, relay.stop, lambda: server.stop(5)]
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
