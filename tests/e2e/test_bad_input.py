"""Property: whatever an upstream producer sends, each record ends on the valid topic once or on the
dead-letter topic with its reason, and the records behind it flow on (ingest + validator as processes,
the real broker, an outside aiokafka producer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.kafka import Record, TopicNamer
from loopline_core.kafka.records import DLQ_REASON, DLQ_SOURCE
from loopline_stack.services import ServiceSet

T0 = 1763800005.0
EXAMPLES = int(os.environ.get("LOOPLINE_TEST_BAD_INPUT_EXAMPLES", "200"))
PER_EXAMPLE = 50  # 200 x 50 = 10,000 records


@dataclass
class Case:
    raw: bytes
    expect: str  # "valid", "dead" or "either"
    ts: float | None = None  # the event time a valid record must carry
    shared_id: str | None = None  # records sharing an event id: one of them passes, the others are duplicates


def _txn(i: int, draw: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "customer_id": f"c{draw(st.integers(0, 50))}",
            "merchant_id": f"m{draw(st.integers(0, 9))}",
            "amount": draw(st.floats(0, 1_000_000, allow_nan=False, allow_infinity=False)),
            "currency": draw(st.sampled_from(["EUR", "USD", "GBP"])), "country": draw(st.sampled_from(["DE", "FR"])),
            "merchant_category": draw(st.sampled_from(["grocery", "electronics", "travel"])),
            "ts": T0 + draw(st.integers(0, 86_400)), "device": draw(st.sampled_from(["ios", "web"]))}


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # allow_nan: Python writes NaN/Infinity as a careless producer would


POISON_TS: list[Any] = [1e300, -1, float("nan"), float("inf"), True, "2025-11-22T08:26:45", "yesterday", None, [1]]
WRONG: list[tuple[str, Any]] = [("amount", "12.5"), ("amount", float("nan")), ("amount", float("-inf")),
                                ("amount", 10**400), ("amount", -3), ("customer_id", 17), ("currency", "EURO"),
                                ("country", None), ("merchant_category", ["grocery"]), ("event_id", 5),
                                ("event_id", ""), ("amount", True)]


def _iso(txn: dict[str, Any]) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.fromtimestamp(txn["ts"], UTC).isoformat()


def _missing(txn: dict[str, Any], draw: Any) -> dict[str, Any]:
    field = draw(st.sampled_from(["customer_id", "merchant_id", "amount", "currency", "merchant_category"]))
    return {k: v for k, v in txn.items() if k != field}


def _nested(draw: Any) -> bytes:
    depth = draw(st.integers(1_000, 5_000))
    return b'{"customer_id": ' + b"[" * depth + b"]" * depth + b"}"


# kind -> (how a producer gets it wrong or right, what must become of it)
KINDS: dict[str, Callable[[dict[str, Any], int, Any], Case]] = {
    "clean": lambda t, _i, _d: Case(_dumps(t), "valid", t["ts"]),
    "ms": lambda t, _i, _d: Case(_dumps({**t, "ts": int(t["ts"] * 1000)}), "valid", t["ts"]),
    "iso": lambda t, _i, _d: Case(_dumps({**t, "ts": _iso(t)}), "valid", t["ts"]),
    "extra": lambda t, _i, d: Case(_dumps({**t, "note": d(st.text(max_size=20))}), "valid", t["ts"]),
    "no_id": lambda t, i, _d: Case(_dumps({**{k: v for k, v in t.items() if k != "event_id"}, "ref": i}),
                                   "valid", t["ts"]),
    "poison_ts": lambda t, _i, d: Case(_dumps({**t, "ts": d(st.sampled_from(POISON_TS))}), "dead"),
    "wrong": lambda t, _i, d: Case(_dumps({**t, **dict([d(st.sampled_from(WRONG))])}), "dead"),
    "missing": lambda t, _i, d: Case(_dumps(_missing(t, d)), "dead"),
    "garbage": lambda _t, _i, d: Case(d(st.binary(max_size=64)), "dead"),
    "text": lambda _t, _i, d: Case(d(st.text(max_size=64)).encode("utf-8", "surrogatepass"), "either"),
    "not_object": lambda _t, _i, d: Case(_dumps(d(st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                                              st.none()))), "dead"),
    "nested": lambda _t, _i, d: Case(_nested(d), "dead"),
    # NaN where no field rule would look for it
    "nan_anywhere": lambda t, _i, _d: Case(_dumps(t).replace(b'"device": "', b'"device": NaN, "d": "', 1), "dead"),
    "duplicate": lambda t, _i, _d: Case(_dumps({**t, "event_id": "the-same-id", "customer_id": "c0"}), "valid",
                                        shared_id="the-same-id"),
}


def _big(t: dict[str, Any], draw: Any) -> Case:
    return Case(_dumps({**t, "device": draw(st.characters(codec="utf-8")) * 200_000}), "either", t["ts"])


@st.composite
def cases(draw: Any, counter: list[int]) -> Case:
    counter[0] += 1
    if draw(st.integers(0, 499)) == 0:  # 200 KB strings: a few dozen prove the point without moving gigabytes
        return _big(_txn(counter[0], draw), draw)
    kind = draw(st.sampled_from(sorted(KINDS)))
    return KINDS[kind](_txn(counter[0], draw), counter[0], draw)


def _generate() -> list[Case]:
    out: list[Case] = []
    counter = [0]

    @settings(max_examples=EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(cases(counter), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def collect(batch: list[Case]) -> None:
        out.extend(batch)

    collect()
    return out


async def _produce(bootstrap: str, topic: str, all_cases: list[Case]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024,
                                max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, c.raw, key=f"r{n}".encode()) for n, c in enumerate(all_cases)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.mark.e2e
async def test_every_record_ends_valid_once_or_dead_lettered_with_a_reason(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    all_cases = _generate()
    assert len(all_cases) >= EXAMPLES * PER_EXAMPLE
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    services("ingest", "validator")
    await _produce(bootstrap, namer.raw("transactions"), all_cases)
    by_raw: dict[bytes, list[int]] = defaultdict(list)
    for n, c in enumerate(all_cases):
        by_raw[c.raw].append(n)
    outcome: dict[int, str] = {}
    valid_reader, dlq_reader = _Reader(bootstrap, namer.valid("transactions")), _Reader(bootstrap,
                                                                                        namer.dlq("transactions"))
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(180):
                while len(outcome) < len(all_cases):
                    valid, dlq = await valid_reader.more(), await dlq_reader.more()
                    outcome = _outcomes(namer, by_raw, valid, dlq)
                    passed = {EventIngested.FromString(r.value).metadata.event_id for r in valid}
                    outcome.update({n: "valid" for n, c in enumerate(all_cases) if c.shared_id in passed})
        missing = [n for n in range(len(all_cases)) if n not in outcome]
        assert not missing, f"{len(missing)} records vanished, e.g. {[all_cases[n].raw[:100] for n in missing[:4]]}"
    finally:
        await valid_reader.close()
        await dlq_reader.close()

    envelopes = [EventIngested.FromString(r.value) for r in valid]
    ids = Counter(e.metadata.event_id for e in envelopes)
    assert not [i for i, k in ids.items() if k > 1], "an event id reached the valid topic twice"
    assert ids["the-same-id"] == 1, "records sharing an event id pass once"
    for e in envelopes:
        for n in by_raw.get(e.payload, []):
            ts = all_cases[n].ts
            if ts is not None:
                assert math.isclose(e.event_time.ToNanoseconds() / 1e9, ts, abs_tol=1e-3), all_cases[n].raw[:200]
    assert all(r.header(DLQ_REASON) for r in dlq), "every dead letter says why"
    wrong = [n for n, c in enumerate(all_cases) if c.expect != "either" and outcome[n] != c.expect]
    assert not wrong, [(all_cases[n].expect, all_cases[n].raw[:160]) for n in wrong[:5]]


def _outcomes(namer: TopicNamer, by_raw: dict[bytes, list[int]], valid: list[Record],
              dlq: list[Record]) -> dict[int, str]:
    """Which records reached the valid topic and which the dead letters (by the producer's key at
    ingest, by the enveloped bytes after it)."""
    outcome: dict[int, str] = {}
    for r in valid:
        for n in by_raw.get(EventIngested.FromString(r.value).payload, []):
            outcome[n] = "valid"
    raw_topic = namer.raw("transactions")
    for r in dlq:
        if (r.header(DLQ_SOURCE) or "").startswith(raw_topic + "/"):
            outcome[int((r.key or b"r-1")[1:])] = "dead"
        else:
            for n in by_raw.get(EventIngested.FromString(r.value).payload, []):
                outcome[n] = "dead"
    return outcome


class _Reader:
    """Everything on a topic so far, read incrementally (no group, from the beginning)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                         auto_offset_reset="earliest", group_id=None,
                                         max_partition_fetch_bytes=8 * 1024 * 1024)
        self.records: list[Record] = []
        self.started = False

    async def more(self) -> list[Record]:
        if not self.started:
            await self.consumer.start()
            self.started = True
        batch = await self.consumer.getmany(timeout_ms=500)
        self.records += [Record.of(r) for recs in batch.values() for r in recs]
        return self.records

    async def close(self) -> None:
        if self.started:
            await self.consumer.stop()
