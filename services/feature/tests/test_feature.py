"""Feature service as its own process: offline log, online values, point-in-time training sets."""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from loopline.feature.v1 import feature_pb2 as pb
from loopline.feature.v1 import feature_pb2_grpc
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.events import metadata, timestamp
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_feature.domain.features import FEATURE_NAMES, History, compute
from loopline_stack.services import ServiceSet

T0 = 1795341600.0  # 2026-11-22 10:00 UTC


def test_one_definition_for_both_paths() -> None:
    night = compute(100.0, T0 - 7 * 3600, "gift_cards", History(2, 40.0))  # 03:00 UTC
    assert night == [100.0, math.log1p(100.0), 2.0, 40.0, 100.0 / 41.0, 1.0, 1.0]
    assert compute(5.0, T0, "grocery", History(0, 0.0))[5:] == [0.0, 0.0]


async def _until(check: Callable[[], object], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[misc]
            await asyncio.sleep(0.2)


async def test_log_online_values_and_training_set(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                                  publisher: Publisher) -> None:
    svc = services("feature")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    amounts = [10.0, 20.0, 30.0, 1000.0]
    for i, amount in enumerate(amounts):
        payload = {"customer_id": "c1", "amount": amount, "merchant_category": "grocery"}
        env = EventIngested(metadata=metadata("test", f"e{i}"), dataset="transactions",
                            event_time=timestamp(T0 + i * 3600), payload=json.dumps(payload).encode())
        await publisher.publish(namer.valid("transactions"), env.SerializeToString(), key="c1")
        if i == 1:  # a redelivered event must not count twice
            await publisher.publish(namer.valid("transactions"), env.SerializeToString(), key="c1")
    for i in (0, 1, 3):
        await publisher.publish(namer.labels("transactions"), json.dumps({"event_id": f"e{i}", "label": int(i == 3)})
                                .encode(), key=f"e{i}")
    await publisher.publish(namer.labels("transactions"), b'{"label": 1}', key="x")  # no event id: dead letter

    async with grpc.aio.insecure_channel(svc.addr("feature")) as ch:
        stub = feature_pb2_grpc.FeatureServiceStub(ch)

        async def online_count() -> bool:
            r = await stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(feature_view="transactions",
                                                                         entity_ids=["c1", "nobody"]))
            return r.rows[0].values[0] == 4.0

        await _until(online_count)
        r = await stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(feature_view="transactions",
                                                                     entity_ids=["c1", "nobody"]))
        assert list(r.feature_names) == ["txn_count_24h", "mean_amount_24h"]
        assert list(r.rows[0].values) == [4.0, 265.0] and r.rows[0].found
        assert not r.rows[1].found
        # as of the 4th event's time, the window holds only the three before it
        r = await stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
            feature_view="transactions", entity_ids=["c1"], as_of=timestamp(T0 + 3 * 3600)))
        assert list(r.rows[0].values) == [3.0, 20.0]

        async def labelled() -> bool:
            try:
                got = await stub.BuildTrainingSet(pb.BuildTrainingSetRequest(feature_view="transactions"))
            except grpc.aio.AioRpcError:
                return False
            return got.rows == 3

        await _until(labelled)
        ts = await stub.BuildTrainingSet(pb.BuildTrainingSetRequest(feature_view="transactions"))
        assert ts.positives == 1 and list(ts.feature_names) == FEATURE_NAMES
        again = await stub.BuildTrainingSet(pb.BuildTrainingSetRequest(feature_view="transactions"))
        assert again.digest == ts.digest, "same data, same content address"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(feature_view="nope", entity_ids=["c1"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    store = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                        isolated["LOOPLINE_S3_SECRET_KEY"])
    bucket, key = ts.uri.removeprefix("s3://").split("/", 1)
    data = np.load(io.BytesIO(await store.get_bytes(bucket, key)))
    # point in time: each row's history is only what came before it (the 1000 sees mean 20 of 3 events)
    x = data["X"]
    assert x[:, 2].tolist() == [0.0, 1.0, 3.0]
    assert x[2, 4] == pytest.approx(1000.0 / 21.0)
    assert data["y"].tolist() == [0.0, 0.0, 1.0]
