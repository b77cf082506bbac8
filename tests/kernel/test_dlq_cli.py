"""``loopline dlq inspect|redrive`` against the real local broker: counts, redrive once per dead letter."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loopline.common.v1.metadata_pb2 import EventMetadata
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_cli.app import app
from loopline_core.kafka import TopicNamer
from typer.testing import CliRunner

DS = "transactions"
AMOUNT = "amount must be positive"
RANGE = "contract transactions.v1: amount 1e9 above max 1000000"
NOT_JSON = "not JSON: Expecting value: line 1 column 1 (char 0)"
EXHAUSTED = "retries used up after 5 attempts"


@dataclass(frozen=True)
class Letter:
    """One dead letter as the test puts it on the DLQ topic, and what redrive must make of it."""

    reason: str
    kind: str
    source_stage: str  # raw, ingested or labels
    partition: int
    key: bytes
    payload: bytes
    event_id: str | None  # the id redrive must set; None when none is known
    envelope_id: str = ""  # metadata.event_id when the letter holds an envelope
    extra: tuple[tuple[str, bytes], ...] = ()


LETTERS = [
    Letter(AMOUNT, "INVALID_ARGUMENT", "raw", 0, b"c1", b'{"event_id": "e-1", "amount": -5}', "e-1"),
    Letter(AMOUNT, "INVALID_ARGUMENT", "raw", 1, b"c2", b'{"amount": -7}', None),
    Letter(AMOUNT, "INVALID_ARGUMENT", "ingested", 2, b"c3", b'{"event_id": "p-3", "amount": -1}', "env-3",
           envelope_id="env-3"),
    Letter(AMOUNT, "INVALID_ARGUMENT", "labels", 0, b"c4", b'{"label": 1}', None),  # not redrivable to raw
    Letter(NOT_JSON, "INVALID_ARGUMENT", "raw", 0, b"c5", b"\xff\x00garbage", None),
    Letter(NOT_JSON, "INVALID_ARGUMENT", "raw", 2, b"c6", b"{oops", None,
           extra=(("x-loopline-event-id", b"hdr-6"),)),
    Letter(RANGE, "INVALID_ARGUMENT", "ingested", 1, b"c7", b'{"amount": 1e9}', "env-7", envelope_id="env-7",
           extra=(("x-loopline-dlq-rule", b"max"), ("x-loopline-dlq-contract", b"transactions.v1"))),
    Letter(RANGE, "INVALID_ARGUMENT", "ingested", 0, b"c8", b'{"amount": 2e9}', "env-8", envelope_id="env-8",
           extra=(("x-loopline-dlq-rule", b"max"),)),
    Letter(EXHAUSTED, "exhausted", "ingested", 1, b"c9", b'{"event_id": "p-9"}', "p-9",
           extra=(("x-loopline-dlq-attempts", b"5"),)),
    # behind c6 (another reason) on partition 2: only the filter's own group can say it went out
    Letter(AMOUNT, "INVALID_ARGUMENT", "raw", 2, b"c11", b'{"event_id": "e-11"}', "e-11"),
]


async def _seed(bootstrap: str, namer: TopicNamer, letters: list[Letter]) -> None:
    """Write dead letters straight onto the DLQ topic, as the bus would have."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for i, lt in enumerate(letters):
            stage_topic = {"raw": namer.raw, "ingested": namer.ingested, "labels": namer.labels}[lt.source_stage](DS)
            value, headers = lt.payload, [("content-type", b"application/json")]
            if lt.source_stage == "ingested":
                value = EventIngested(metadata=EventMetadata(event_id=lt.envelope_id, producer="ingest"), dataset=DS,
                                      source="pos-terminal", content_type="application/json",
                                      payload=lt.payload).SerializeToString()
                headers = [("content-type", b"application/x-protobuf"),
                           ("x-loopline-type", b"loopline.ingest.v1.EventIngested")]
            headers += [*lt.extra, ("x-loopline-dlq-reason", lt.reason.encode()),
                        ("x-loopline-dlq-kind", lt.kind.encode()),
                        ("x-loopline-dlq-source", f"{stage_topic}/{lt.partition}/{100 + i}".encode())]
            await producer.send_and_wait(namer.dlq(DS), value, key=lt.key, headers=headers, partition=lt.partition)
    finally:
        await producer.stop()


def _cli(bootstrap: str, namer: TopicNamer, *args: str) -> Any:
    env = {"LOOPLINE_KAFKA_BOOTSTRAP": bootstrap, "LOOPLINE_TOPIC_PREFIX": namer.prefix}
    return CliRunner().invoke(app, ["dlq", *args], env=env)


async def _invoke(bootstrap: str, namer: TopicNamer, *args: str) -> Any:
    # The command runs its own event loop (asyncio.run), so it cannot run on the test's loop.
    result = await asyncio.to_thread(_cli, bootstrap, namer, *args)
    assert result.exit_code == 0, result.output
    return result


async def _raw_records(bootstrap: str, topic: str) -> list[Any]:
    """Every record on ``topic`` up to its current end offsets."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]  # the namer fixture creates 3 partitions
        c.assign(tps)
        end = await c.end_offsets(tps)
        out: list[Any] = []
        async with asyncio.timeout(20):
            for tp in tps:
                c.seek(tp, 0)
                while await c.position(tp) < end[tp]:
                    out += (await c.getmany(tp, timeout_ms=200)).get(tp, [])
        return out
    finally:
        await c.stop()


def _by_key(records: list[Any]) -> dict[bytes, Any]:
    return {r.key: r for r in records}


async def test_inspect_counts_by_reason_kind_and_rule(bootstrap: str, namer: TopicNamer) -> None:
    await _seed(bootstrap, namer, LETTERS)

    report = json.loads((await _invoke(bootstrap, namer, "inspect", DS, "--json", "--samples", "2")).stdout)
    assert report["total"] == len(LETTERS)
    assert {g["key"]: g["count"] for g in report["groups"]} == {AMOUNT: 5, NOT_JSON: 2, RANGE: 2, EXHAUSTED: 1}
    amount = next(g for g in report["groups"] if g["key"] == AMOUNT)
    assert amount["kinds"] == {"INVALID_ARGUMENT": 5} and len(amount["samples"]) == 2
    assert report["groups"][0]["key"] == AMOUNT  # largest group first
    samples = {s["key"]: s for g in report["groups"] for s in g["samples"]}
    assert samples["c7"]["event_id"] == "env-7" and samples["c7"]["value_preview"] == '{"amount": 1e9}'
    assert samples["c7"]["details"] == {"rule": "max", "contract": "transactions.v1"}

    by_kind = json.loads((await _invoke(bootstrap, namer, "inspect", DS, "--json", "--by", "kind")).stdout)
    assert {g["key"]: g["count"] for g in by_kind["groups"]} == {"INVALID_ARGUMENT": 9, "exhausted": 1}
    by_rule = json.loads((await _invoke(bootstrap, namer, "inspect", DS, "--json", "--by", "rule")).stdout)
    assert {g["key"]: g["count"] for g in by_rule["groups"]} == {"(none)": 8, "max": 2}

    table = (await _invoke(bootstrap, namer, "inspect", DS)).stdout
    assert f"{namer.dlq(DS)}: 10 dead letters" in table and "amount must be positive" in table


async def test_redrive_republishes_each_dead_letter_once(bootstrap: str, namer: TopicNamer) -> None:
    await _seed(bootstrap, namer, LETTERS)
    raw_topic = namer.raw(DS)

    dry = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--reason", "positive", "--dry-run",
                                    "--json")).stdout)
    assert sorted(r["key"] for r in dry["records"]) == ["c1", "c11", "c2", "c3"]
    assert await _raw_records(bootstrap, raw_topic) == []  # dry run publishes nothing ...

    first = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--reason", "positive", "--json")).stdout)
    assert first["republished"] == 4  # ... and commits nothing: the real run still finds them all
    assert [s["key"] for s in first["skipped"]] == ["c4"]  # failed on the labels topic: not for ingest
    got = _by_key(await _raw_records(bootstrap, raw_topic))
    assert sorted(got) == [b"c1", b"c11", b"c2", b"c3"]
    for lt in [*LETTERS[:3], LETTERS[-1]]:
        rec = got[lt.key]
        headers = dict(rec.headers)
        assert rec.value == lt.payload  # the producer's bytes, unwrapped from the envelope for c3
        assert headers.get("x-loopline-event-id", b"").decode() == (lt.event_id or "")
        assert headers["content-type"] == b"application/json"
        assert headers["x-loopline-redriven-from"].decode().startswith(
            f"{namer.raw(DS) if lt.source_stage == 'raw' else namer.ingested(DS)}/{lt.partition}/")
        assert not any(k.startswith("x-loopline-dlq-") for k in headers)
    assert dict(got[b"c3"].headers)["x-loopline-source"] == b"pos-terminal"

    again = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--reason", "positive", "--json")).stdout)
    # The main group stopped before c5 and c6 (other reasons); c11 behind c6 is known from the filter's group.
    assert again["republished"] == 0 and again["already_redriven"] == 1 and again["unmatched"] == 5
    assert len(await _raw_records(bootstrap, raw_topic)) == 4

    # The first filter left the other reasons for later: a second filter still finds its own.
    by_kind = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--kind", "exhausted", "--json")).stdout)
    assert [r["key"] for r in by_kind["records"]] == ["c9"]
    rest = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--json")).stdout)
    assert sorted(r["key"] for r in rest["records"]) == ["c5", "c6", "c7", "c8"]
    got = _by_key(await _raw_records(bootstrap, raw_topic))
    assert len(got) == 9 and dict(got[b"c6"].headers)["x-loopline-event-id"] == b"hdr-6"
    assert dict(got[b"c7"].headers)["x-loopline-event-id"] == b"env-7" and got[b"c5"].value == b"\xff\x00garbage"

    # New dead letters after a full redrive: only they go out, then nothing.
    await _seed(bootstrap, namer, [Letter(EXHAUSTED, "exhausted", "raw", 2, b"c10", b'{"event_id": "e-10"}', "e-10")])
    late = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--json")).stdout)
    assert [r["key"] for r in late["records"]] == ["c10"]
    final = json.loads((await _invoke(bootstrap, namer, "redrive", DS, "--json")).stdout)
    assert final["republished"] == 0 and final["looked_at"] == 0
    assert len(await _raw_records(bootstrap, raw_topic)) == 10

    text = (await _invoke(bootstrap, namer, "redrive", DS)).stdout
    assert "republished 0 of 0 looked at" in text


async def test_unreachable_broker_and_missing_topic_exit_1(bootstrap: str, namer: TopicNamer) -> None:
    with socket.socket() as s:  # a port nothing listens on: bind, read the number, close
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    for args in (["inspect", DS], ["redrive", DS, "--dry-run"]):
        result = await asyncio.to_thread(_cli, dead, namer, *args)
        assert result.exit_code == 1, result.output
        assert result.stderr == f"error: broker at {dead} unreachable (KafkaConnectionError)\n"
    # The installed command too: exit status 1 and exactly one line on stderr (no client log noise).
    env = {**os.environ, "LOOPLINE_KAFKA_BOOTSTRAP": dead, "LOOPLINE_TOPIC_PREFIX": namer.prefix}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loopline_cli", "dlq", "inspect", DS, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 1 and out == b""
    assert err.decode() == f"error: broker at {dead} unreachable (KafkaConnectionError)\n"

    for args in (["inspect", "no-such-dataset"], ["redrive", "no-such-dataset"]):
        result = await asyncio.to_thread(_cli, bootstrap, namer, *args)
        assert result.exit_code == 1, result.output
        assert result.stderr == f"error: topic {namer.dlq('no-such-dataset')} does not exist\n"
