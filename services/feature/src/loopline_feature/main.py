"""Composition root of the feature service: view catalogue, Postgres, object store, consumers and gRPC."""

from __future__ import annotations

import asyncio
import logging

from loopline.feature.v1 import feature_pb2_grpc
from loopline_core import runtime
from loopline_core.auth import ServerAuth
from loopline_core.contracts import Contracts
from loopline_core.db import create_pool, migrate
from loopline_core.grpcx import start_server
from loopline_core.objstore import ObjectStore
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load

from loopline_feature.adapters import catalog
from loopline_feature.adapters.store import MIGRATIONS, SCHEMA, FeatureStore
from loopline_feature.handlers.events import EventHandlers
from loopline_feature.handlers.grpc import FeatureServicer
from loopline_feature.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "feature")
    auth = ServerAuth.from_settings(settings, "feature")  # before anything starts: a missing file is one line
    views = catalog.load(settings.feature_views_dir)  # a broken view file stops the start, with its reason
    rt = await start_runtime("feature", settings)
    # The store keeps no session state (transaction-scoped locks only): no reset round trip per read.
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), SCHEMA, reset_on_release=False)
    await migrate(pool, SCHEMA, MIGRATIONS)
    store = FeatureStore(pool)
    objects = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value())
    handlers = EventHandlers(store, views, Contracts.load(settings.contracts_dir))
    sources = views.sources()
    rt.subscribe([rt.namer.valid(d) for d in sources], handlers.decode_valid, handlers.on_valid)
    rt.subscribe([rt.namer.labels(d) for d in sources], handlers.decode_label, handlers.on_label,
                 group=rt.namer.group("feature-labels"))
    servicer = FeatureServicer(store, objects, views, settings.feature_max_entities)
    server, port = await start_server([lambda s: feature_pb2_grpc.add_FeatureServiceServicer_to_server(servicer, s)],
                                      settings.feature_port, ["loopline.feature.v1.FeatureService"],
                                      host=settings.bind_host, auth=auth)
    logging.getLogger(__name__).info("serving", extra={"grpc_port": port, "views": sorted(views.by_ref)})
    rt.closers += [lambda: server.stop(5), pool.close]
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
