"""The trainer's feature-service client (the registry is reached through loopline_core.registry)."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loopline.feature.v1 import feature_pb2, feature_pb2_grpc
from loopline_core.errors import LooplineError
from loopline_core.grpcx import channel, error_from_status


def as_error(exc: grpc.aio.AioRpcError) -> LooplineError:
    """Map a peer's status back to an error kind (unknown codes are transient: UNAVAILABLE)."""
    return error_from_status(exc)


class FeatureClient:
    def __init__(self, addr: str) -> None:
        self._channel = channel(addr)  # this process's LOOPLINE_AUTH_* credentials
        self._stub = feature_pb2_grpc.FeatureServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def training_set(self, feature_view: str, dataset: str, as_of: Timestamp,
                           recorded_since: Timestamp | None = None) -> feature_pb2.BuildTrainingSetResponse:
        """The snapshot as of ``as_of``, pinned in system time to the same instant: a rebuild after late
        data arrived yields the same bytes (and digest); with ``recorded_since``, of the events that
        arrived from then on only."""
        req = feature_pb2.BuildTrainingSetRequest(feature_view=feature_view, dataset=dataset, as_of=as_of,
                                                  recorded_by=as_of)
        if recorded_since is not None:
            req.recorded_since.CopyFrom(recorded_since)
        try:
            resp: feature_pb2.BuildTrainingSetResponse = await self._stub.BuildTrainingSet(
                req, timeout=120)
        except grpc.aio.AioRpcError as exc:
            raise as_error(exc) from exc
        return resp
