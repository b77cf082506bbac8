"""FeatureService: online values and point-in-time training sets."""

from __future__ import annotations

import hashlib
import io

import grpc
import numpy as np
from loopline.feature.v1 import feature_pb2 as pb
from loopline.feature.v1 import feature_pb2_grpc
from loopline_core.errors import invalid, precondition
from loopline_core.events import timestamp
from loopline_core.objstore import ObjectStore

from loopline_feature.adapters.store import FeatureStore
from loopline_feature.domain.features import FEATURE_NAMES, ONLINE_NAMES, VIEW

DATASETS = "loopline-datasets"


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, store: FeatureStore, objects: ObjectStore) -> None:
        self.store = store
        self.objects = objects

    async def GetOnlineFeatures(self, request: pb.GetOnlineFeaturesRequest,  # noqa: N802
                                context: grpc.aio.ServicerContext) -> pb.GetOnlineFeaturesResponse:
        if request.feature_view != VIEW:
            raise invalid(f"unknown feature view {request.feature_view!r}")
        ids = list(request.entity_ids)
        if request.HasField("as_of"):
            t = request.as_of.ToNanoseconds() / 1e9
            history = await self.store.as_of(ids, t)
            return pb.GetOnlineFeaturesResponse(feature_names=ONLINE_NAMES, rows=[
                pb.FeatureRow(entity_id=e, values=[float(h.count), h.mean_amount], found=h.count > 0,
                              event_time=timestamp(h.latest)) for e, h in history.items()])
        found = await self.store.online(ids)
        rows = []
        for eid in request.entity_ids:
            if eid in found:
                values, t = found[eid]
                rows.append(pb.FeatureRow(entity_id=eid, values=values, found=True, event_time=timestamp(t)))
            else:
                rows.append(pb.FeatureRow(entity_id=eid, values=[0.0] * len(ONLINE_NAMES), found=False))
        return pb.GetOnlineFeaturesResponse(feature_names=ONLINE_NAMES, rows=rows)

    async def BuildTrainingSet(self, request: pb.BuildTrainingSetRequest,  # noqa: N802
                               context: grpc.aio.ServicerContext) -> pb.BuildTrainingSetResponse:
        """Join the offline log with labels and store the snapshot under its content digest."""
        if request.feature_view != VIEW:
            raise invalid(f"unknown feature view {request.feature_view!r}")
        as_of = request.as_of.ToNanoseconds() / 1e9 if request.HasField("as_of") else None
        x, y, t = await self.store.training_set(as_of)
        if len(y) == 0:
            raise precondition("no labelled events yet")
        h = hashlib.sha256()
        for part in (x.tobytes(), y.tobytes(), t.tobytes(), ",".join(FEATURE_NAMES).encode()):
            h.update(part)
        digest = h.hexdigest()
        key = f"{request.dataset or VIEW}/{digest}.npz"
        if not await self.objects.exists(DATASETS, key):
            buf = io.BytesIO()
            np.savez(buf, X=x, y=y, event_time=t, feature_names=np.asarray(FEATURE_NAMES))
            await self.objects.put_bytes(DATASETS, key, buf.getvalue(), metadata={"sha256": digest})
        return pb.BuildTrainingSetResponse(uri=f"s3://{DATASETS}/{key}", digest=digest, rows=len(y),
                                           positives=int(y.sum()), feature_names=FEATURE_NAMES)
