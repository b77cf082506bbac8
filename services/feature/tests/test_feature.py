"""The feature service as its own process: online vectors as of the request time, late events,
point-in-time training sets with late labels, and the skew test (online == offline)."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import Awaitable, Callable

import grpc
import pyarrow.parquet as pq
import pytest
from loopline.datasets.v1.transactions_pb2 import Transaction
from loopline.feature.v1 import feature_pb2 as pb
from loopline.feature.v1 import feature_pb2_grpc
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline.labels.v1.label_pb2 import Label
from loopline_core import grpcx
from loopline_core.events import metadata, timestamp
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.objstore import ObjectStore
from loopline_stack.services import ServiceSet

T0 = 1795341600.0  # 2026-11-22 10:00 UTC
H = 3600.0
AGGS = ["txn_count_1h", "txn_count_24h", "mean_amount_24h", "sum_amount_24h", "txn_count_7d", "max_amount_7d",
        "std_amount_7d"]


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.2)


def _txn(event_id: str, customer: str, t: float, amount: float, category: str = "grocery") -> bytes:
    payload = {"customer_id": customer, "amount": amount, "merchant_category": category, "country": "DE", "ts": t}
    return EventIngested(metadata=metadata("test", event_id), dataset="transactions", event_time=timestamp(t),
                         content_type="application/json", payload=json.dumps(payload).encode()).SerializeToString()


def _req(entities: list[str], t: float | None = None, features: list[str] | None = None,
         rows: list[pb.RequestRow] | None = None, view: str = "transactions") -> pb.GetOnlineFeaturesRequest:
    r = pb.GetOnlineFeaturesRequest(feature_view=view, entity_ids=entities, features=features or [],
                                    request=rows or [])
    if t is not None:
        r.as_of.CopyFrom(timestamp(t))
    return r


async def _read_set(isolated: dict[str, str], uri: str) -> dict[str, list]:
    store = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                        isolated["LOOPLINE_S3_SECRET_KEY"])
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return pq.read_table(io.BytesIO(await store.get_bytes(bucket, key))).to_pydict()


async def test_online_vectors_late_events_and_bad_requests(isolated: dict[str, str],
                                                           services: Callable[..., ServiceSet],
                                                           publisher: Publisher) -> None:
    svc = services("feature")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    topic = namer.valid("transactions")
    for i, amount in enumerate([10.0, 20.0, 30.0]):
        await publisher.publish(topic, _txn(f"e{i}", "c1", T0 + i * H, amount), key="c1")
    await publisher.publish(topic, _txn("e1", "c1", T0 + H, 20.0), key="c1")  # redelivered: counts once
    await publisher.publish(topic, _txn("late", "c1", T0 + 1.5 * H, 50.0), key="c1")  # 30 min late: admitted
    await publisher.publish(topic, _txn("too-late", "c1", T0 - 2 * H, 999.0), key="c1")  # 4 h late: nowhere
    await publisher.publish(topic, b"\x00not a protobuf", key="c1")  # dead letter, the rest flows
    binary = Transaction(customer_id="c1", amount=40.0, merchant_category="travel", country="FR",
                         ts=T0 + 1.75 * H)
    await publisher.publish(topic, EventIngested(  # a protobuf record, read through its contract
        metadata=metadata("test", "proto"), dataset="transactions", event_time=timestamp(T0 + 1.75 * H),
        content_type="application/x-protobuf", contract_version="1.0",
        payload=binary.SerializeToString()).SerializeToString(), key="c1")
    await publisher.publish(topic, _txn("old", "c9", T0, 5.0), key="c9")
    await publisher.publish(topic, _txn("new", "c9", T0 + 9 * 86400, 7.0), key="c9")  # drops "old" online

    async with grpcx.channel(svc.addr("feature")) as ch:
        stub = feature_pb2_grpc.FeatureServiceStub(ch)

        async def seen_all() -> bool:
            r = await stub.GetOnlineFeatures(_req(["c1"], T0 + 3 * H, ["txn_count_24h"]))
            return r.rows[0].values[0] == 5.0

        await _until(seen_all)
        r = await stub.GetOnlineFeatures(_req(["c1", "nobody"], T0 + 2 * H + 60, AGGS))
        assert list(r.feature_names) == AGGS and r.feature_view == "transactions:1"
        assert list(r.rows[0].values)[:5] == [3.0, 5.0, 30.0, 150.0, 5.0], "the late 50 counts, the too-late 999 not"
        assert r.rows[0].values[5] == 50.0 and r.rows[0].found
        assert r.rows[0].event_time.ToNanoseconds() / 1e9 == pytest.approx(T0 + 2 * H)
        assert not r.rows[1].found and list(r.rows[1].values) == [0.0] * 7
        # the window slides with the request time: 25 h later only the 1.5, 1.75 and 2 h events are within 24 h
        r = await stub.GetOnlineFeatures(_req(["c1"], T0 + 25 * H + 60, ["txn_count_24h", "txn_count_7d"]))
        assert list(r.rows[0].values) == [3.0, 5.0]
        # the model's vector, with the transaction being scored as the request row (03:00 UTC is night)
        night = T0 - 7 * H + 86400
        row = pb.RequestRow(numbers={"amount": 100.0}, strings={"merchant_category": "gift_cards"})
        r = await stub.GetOnlineFeatures(_req(["c1"], night, rows=[row]))
        assert list(r.feature_names)[:3] == ["amount", "log_amount", "txn_count_24h"]
        assert r.rows[0].values[0] == 100.0 and r.rows[0].values[2] == 5.0
        assert r.rows[0].values[4] == pytest.approx(100.0 / (30.0 + 1.0)) and list(r.rows[0].values)[5:] == [1.0, 1.0]

        async def c9_seen() -> bool:
            r = await stub.GetOnlineFeatures(_req(["c9"], T0 + 9 * 86400 + 1, ["txn_count_7d", "max_amount_7d"]))
            return list(r.rows[0].values) == [1.0, 7.0]

        await _until(c9_seen)
        bad = [(_req(["c9"], T0 + H, ["txn_count_7d"]), grpc.StatusCode.FAILED_PRECONDITION),  # past its horizon
               (_req(["c1"], view="nope"), grpc.StatusCode.NOT_FOUND),
               (_req(["c1"], view="transactions:9"), grpc.StatusCode.NOT_FOUND),
               (_req([]), grpc.StatusCode.INVALID_ARGUMENT),
               (_req([""]), grpc.StatusCode.INVALID_ARGUMENT),
               (_req(["x" * 300]), grpc.StatusCode.INVALID_ARGUMENT),
               (_req([f"c{i}" for i in range(1001)], features=["txn_count_1h"]), grpc.StatusCode.INVALID_ARGUMENT),
               (_req(["c1"], features=["nope"]), grpc.StatusCode.INVALID_ARGUMENT),
               (_req(["c1"]), grpc.StatusCode.INVALID_ARGUMENT),  # on-demand features without a request row
               (_req(["c1", "c2"], rows=[row]), grpc.StatusCode.INVALID_ARGUMENT),
               (_req(["c1"], rows=[pb.RequestRow(numbers={"amount": float("nan")})]),
                grpc.StatusCode.INVALID_ARGUMENT)]
        for request, code in bad:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetOnlineFeatures(request)
            assert err.value.code() == code, (request, err.value.details())


async def test_training_sets_are_point_in_time_and_match_the_online_path(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher) -> None:
    """The skew test: random events for a few customers, some arriving late, go through the service;
    every labelled row of the training set equals GetOnlineFeatures as of that row's event time with
    the event as the request row, to 1e-9. Labels count only when known by the set's as_of."""
    svc = services("feature")
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    rng = random.Random(11)  # noqa: S311 - test data, not secrets
    events = []
    for i in range(120):
        t = T0 + rng.uniform(0, 3 * 86400)
        events.append((f"t{i}", f"c{rng.randrange(4)}", t, round(rng.lognormvariate(3, 1), 2),
                       rng.choice(["grocery", "crypto", "travel"])))
    events.sort(key=lambda e: e[2])
    # a few events arrive up to 50 minutes after later ones of their customer (within the lateness)
    order = list(range(len(events)))
    for _ in range(15):
        i = rng.randrange(len(order) - 3)
        order[i], order[i + 3] = order[i + 3], order[i]
    for i in order:
        eid, c, t, amount, cat = events[i]
        await publisher.publish(namer.valid("transactions"), _txn(eid, c, t, amount, cat), key=c)
    as_of = T0 + 3 * 86400 + H
    for k, (eid, _, t, _, _) in enumerate(events):
        label = Label(event_id=eid, value=float(k % 5 == 0), dataset="transactions")
        label.labelled_at.CopyFrom(timestamp(t + 600))
        await publisher.publish(namer.labels("transactions"), label.SerializeToString(), key=eid,
                                content_type="application/x-protobuf")
    # a correction known only after as_of must not reach the set; a JSON label (same decoder) does
    first = events[0][0]
    await publisher.publish(namer.labels("transactions"),
                            json.dumps({"event_id": first, "label": False, "ts": as_of + 60}).encode(), key=first,
                            content_type="application/json")
    await publisher.publish(namer.labels("transactions"), b'{"label": 1}', key="x",  # no event id: dead letter
                            content_type="application/json")

    async with grpcx.channel(svc.addr("feature")) as ch:
        stub = feature_pb2_grpc.FeatureServiceStub(ch)
        request = pb.BuildTrainingSetRequest(feature_view="transactions", as_of=timestamp(as_of))

        async def complete() -> bool:
            try:
                return (await stub.BuildTrainingSet(request)).rows == len(events)
            except grpc.aio.AioRpcError:
                return False

        await _until(complete)
        ts = await stub.BuildTrainingSet(request)
        assert ts.feature_view == "transactions:1" and ts.manifest_uri.endswith(".manifest.json")
        again = await stub.BuildTrainingSet(request)
        assert again.digest == ts.digest and again.uri == ts.uri, "same as_of, same bytes"
        data = await _read_set(isolated, ts.uri)
        assert data["event_id"] == [e[0] for e in events], "rows in event-time order"
        assert data["label"][0] == 1.0, "the correction (to 0) labelled after as_of is not used"
        assert sum(data["label"]) == ts.positives == sum(1 for k in range(len(events)) if k % 5 == 0)
        # an earlier as_of: fewer events, and only labels known by then
        early = await stub.BuildTrainingSet(pb.BuildTrainingSetRequest(feature_view="transactions",
                                                                       as_of=timestamp(T0 + 86400)))
        assert early.rows == sum(1 for e in events if e[2] + 600 <= T0 + 86400)

        async def corrected() -> bool:  # the correction travels behind the first label on its partition
            later = await stub.BuildTrainingSet(pb.BuildTrainingSetRequest(feature_view="transactions",
                                                                           as_of=timestamp(as_of + 120)))
            return (await _read_set(isolated, later.uri))["label"][0] == 0.0

        await _until(corrected)
        assert (await stub.BuildTrainingSet(request)).digest == ts.digest, "and the set as of before it is unchanged"

        for k, (eid, c, t, amount, cat) in enumerate(events):
            row = pb.RequestRow(numbers={"amount": amount}, strings={"merchant_category": cat})
            online = await stub.GetOnlineFeatures(_req([c], t, rows=[row]))
            offline = [data[name][k] for name in ts.feature_names]
            assert list(online.rows[0].values) == pytest.approx(offline, rel=0, abs=1e-9), eid

    manifest = json.loads(await ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                                            isolated["LOOPLINE_S3_SECRET_KEY"])
                          .get_bytes("loopline-datasets", ts.manifest_uri.split("/", 3)[3]))
    assert manifest["sha256"] == ts.digest and manifest["rows"] == len(events)
    assert manifest["feature_names"] == list(ts.feature_names)
