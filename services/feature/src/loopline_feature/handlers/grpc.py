"""FeatureService: a view's vector for a batch of entities as of the request time, and training sets."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
from loopline.feature.v1 import feature_pb2 as pb
from loopline.feature.v1 import feature_pb2_grpc
from loopline_core.errors import invalid, not_found, precondition
from loopline_core.events import timestamp
from loopline_core.objstore import ObjectStore

from loopline_feature.adapters import snapshots
from loopline_feature.adapters.catalog import Catalog, UnknownViewError
from loopline_feature.adapters.store import FeatureStore
from loopline_feature.domain import training
from loopline_feature.domain.views import FeatureView, Request, Timeline, ViewError
from loopline_feature.metrics import BUILT, SERVED

MAX_ID_LENGTH = 256


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, store: FeatureStore, objects: ObjectStore, catalog: Catalog, max_entities: int) -> None:
        self.store = store
        self.objects = objects
        self.catalog = catalog
        self.max_entities = max_entities

    def _view(self, name: str) -> FeatureView:
        try:
            return self.catalog.get(name)
        except UnknownViewError as exc:
            raise not_found(str(exc)) from exc

    async def GetOnlineFeatures(self, request: pb.GetOnlineFeaturesRequest,  # noqa: N802
                                context: grpc.aio.ServicerContext) -> pb.GetOnlineFeaturesResponse:
        """One row per requested entity, in request order, the values in the order asked (default: the
        model's vector). An entity with no event within the TTL is ``found = false`` with the default
        aggregates: a new customer is a customer with no history, not an error."""
        view = self._view(request.feature_view)
        ids = list(request.entity_ids)
        if not ids or len(ids) > self.max_entities:
            raise invalid(f"entity_ids must name 1..{self.max_entities} entities, not {len(ids)}")
        if any(not e or len(e) > MAX_ID_LENGTH for e in ids):
            raise invalid(f"an entity id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
        if request.request and len(request.request) != len(ids):
            raise invalid(f"request rows ({len(request.request)}) must be one per entity ({len(ids)}) or none")
        try:
            names = view.select(request.features)
        except ViewError as exc:
            raise invalid(str(exc)) from exc
        if view.needs_request(names) and not request.request:
            raise invalid(f"features {', '.join(names)} include on-demand ones: send one request row per entity")
        t = request.as_of.seconds + request.as_of.nanos / 1e9 if request.HasField("as_of") else time.time()
        timelines = await self.store.online(view, ids)
        empty = (Timeline(width=len(view.numbers)), -math.inf)
        rows = []
        found = 0
        for i, entity in enumerate(ids):
            timeline, horizon = timelines.get(entity, empty)
            if t - view.ttl_s < horizon:
                raise precondition(f"as_of is older than the online rows of {entity[:64]!r} reach "
                                   f"(their events since {horizon:.0f}); build a training set for the past")
            aggs, latest = view.aggregates_at(timeline, t)
            row = request.request[i] if request.request else None
            try:
                values = view.assemble(aggs, t, Request(row.numbers, row.strings) if row is not None else None, names)
            except ViewError as exc:
                raise invalid(f"entity {i} ({entity[:64]!r}): {exc}") from exc
            out = pb.FeatureRow(entity_id=entity, values=values, found=latest is not None)
            if latest is not None:
                out.event_time.FromNanoseconds(round(latest * 1e9))
                found += 1
            rows.append(out)
        SERVED.labels(view.ref, "true").inc(found)
        SERVED.labels(view.ref, "false").inc(len(ids) - found)
        return pb.GetOnlineFeaturesResponse(feature_names=names, rows=rows, feature_view=view.ref)

    async def BuildTrainingSet(self, request: pb.BuildTrainingSetRequest,  # noqa: N802
                               context: grpc.aio.ServicerContext) -> pb.BuildTrainingSetResponse:
        """The labelled events at or before ``as_of`` with labels known by then, each with the model's
        vector as of its event time; stored as Parquet under its sha256 with a manifest."""
        view = self._view(request.feature_view or request.dataset)
        as_of = request.as_of.seconds + request.as_of.nanos / 1e9 if request.HasField("as_of") else time.time()
        recorded_by = (request.recorded_by.seconds + request.recorded_by.nanos / 1e9
                       if request.HasField("recorded_by") else math.inf)
        since = (request.recorded_since.seconds + request.recorded_since.nanos / 1e9
                 if request.HasField("recorded_since") else 0.0)
        rows = await self.store.labelled(view, as_of, recorded_by, since)
        if not rows:
            raise precondition(f"no labelled events in view {view.ref} as of {as_of}"
                               + (f" that arrived since {since}" if since else ""))
        lo, hi = training.history_span(view, rows)
        history = await self.store.history(view, sorted({r.entity_id for r in rows}), lo, hi, recorded_by)
        # A big set takes seconds of CPU: build it off the loop that serves online reads.
        ts = await asyncio.to_thread(training.build, view, as_of, rows, history)
        snap = await snapshots.store(self.objects, ts)
        BUILT.labels(view.ref).observe(len(ts.labels))
        return pb.BuildTrainingSetResponse(uri=snap.uri, digest=snap.digest, rows=len(ts.labels),
                                           positives=ts.positives, feature_names=ts.feature_names,
                                           manifest_uri=snap.manifest_uri, feature_view=view.ref,
                                           as_of=timestamp(as_of))
