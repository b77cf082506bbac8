"""Feature vectors for entity requests: one batched GetOnlineFeatures call per request."""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from loopline.feature.v1 import feature_pb2, feature_pb2_grpc
from loopline_core.auth import ClientCredentials
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.grpcx import channel, error_from_status

from loopline_inference.domain.entities import EntityRequest


class OnlineFeatures:
    def __init__(self, addr: str, timeout_s: float = 2.0, credentials: ClientCredentials | None = None) -> None:
        self._channel = channel(addr, credentials)
        self._stub = feature_pb2_grpc.FeatureServiceStub(self._channel)
        self._timeout_s = timeout_s

    async def close(self) -> None:
        await self._channel.close()

    async def vectors(self, view: str, request: EntityRequest, feature_names: list[str],
                      as_of: Timestamp | None = None, timeout_s: float | None = None) -> np.ndarray:
        """The (n, len(feature_names)) float32 vectors of ``request``'s entities, in the model's order."""
        rows = [feature_pb2.RequestRow(numbers=n, strings=s) for n, s in zip(request.numbers, request.strings,
                                                                            strict=True)]
        msg = feature_pb2.GetOnlineFeaturesRequest(
            feature_view=view, entity_ids=request.entity_ids, features=feature_names,
            request=rows if any(request.numbers) or any(request.strings) else [], as_of=as_of)
        try:
            resp: feature_pb2.GetOnlineFeaturesResponse = await self._stub.GetOnlineFeatures(
                msg, timeout=timeout_s or self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_status(exc, "feature service") from exc
        if list(resp.feature_names) != feature_names or len(resp.rows) != len(request.entity_ids):
            raise LooplineError(ErrorKind.FAILED_PRECONDITION,
                                f"feature view {view!r} answered {list(resp.feature_names)} for "
                                f"{len(resp.rows)} rows; the model needs {feature_names} for "
                                f"{len(request.entity_ids)}")
        return np.asarray([list(r.values) for r in resp.rows], dtype=np.float32).reshape(len(resp.rows), -1)
