"""The raw archive and ``loopline replay``: the format's pure parts, then ingest as a process writing
Parquet to the real S3 store and the replay command reading it back, the way an operator would."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopline.datasets.v1.transactions_pb2 import Transaction
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_cli.app import app
from loopline_cli.replay import NO_ARCHIVE, ReplayError, parse_instant, select
from loopline_core.archive import (
    BUCKET,
    MANIFEST,
    PARQUET,
    ArchivedRecord,
    build_files,
    file_name,
    hour_prefix,
    hours,
    key_range,
    read_manifest,
    verified_rows,
)
from loopline_core.errors import LooplineError
from loopline_core.kafka import Publisher, Record, TopicNamer, ensure_topics
from loopline_core.kafka.records import CONTENT_TYPE, EVENT_ID, REPLAY, SOURCE
from loopline_core.objstore import ObjectStore
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet, read_topic
from loopline_testing.flow import transaction
from typer.testing import CliRunner

DS = "transactions"
H = 3_600_000_000


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 1_000_000


def _rec(eid: str, t_us: int, *, partition: int = 0, offset: int = 0, ingest_us: int = 0,
         payload: bytes = b"{}") -> ArchivedRecord:
    return ArchivedRecord(eid, DS, "src", t_us, ingest_us, "application/json", b"k", payload, "t.ingested.x",
                          partition, offset)


# --- the format, pure -------------------------------------------------------------------------------------


def test_hours_of_a_window_cover_exactly_the_overlapping_hours() -> None:
    t = _us("2026-11-22T23:00:00Z")
    assert hours(t, t + H) == [t]  # [23:00, 00:00): one hour, the end is exclusive
    assert hours(t + 1, t + H + 1) == [t, t + H]  # one microsecond into the next hour counts
    assert hours(t - 1, t) == [t - H]
    assert hours(t, t) == [] and hours(t + 5, t) == []
    assert hour_prefix("r/", DS, t + H) == "r/transactions/date=2026-11-23/hour=00/"
    assert hour_prefix("", DS, t) == "transactions/date=2026-11-22/hour=23/"


def test_one_listing_finds_exactly_the_window_hours() -> None:
    t = _us("2026-11-22T21:00:00Z")
    keys = sorted(f"{hour_prefix('r/', ds, t + i * H)}f{j}.parquet" for i in range(6) for j in range(2)
                  for ds in (DS, "transactions2"))
    for start, end in ((t + H, t + 3 * H), (t + H + 1, t + 3 * H + 1), (t, t + 1), (t + 5 * H - 1, t + 9 * H)):
        prefix, after, low, high = key_range("r/", DS, start, end)
        listed = [k for k in keys if k.startswith(prefix) and k > after and low <= k < high]
        assert [k for k in keys if k.startswith(prefix) and k > after][:len(listed)] == listed  # nothing skipped
        expected = [k for k in keys if any(k.startswith(hour_prefix("r/", DS, h)) for h in hours(start, end))]
        assert listed == expected and listed
    # 1970 .. 2100: still one listing
    assert key_range("", DS, 0, 4102444800 * 1_000_000) == (
        "transactions/", "transactions/date=1969-12-31/hour=23/~", "transactions/date=1970-01-01/hour=00/",
        "transactions/date=2100-01-01/hour=00/")


def test_files_split_by_hour_with_deterministic_names_and_bytes() -> None:
    t = _us("2026-11-22T23:59:59Z")
    rows = [_rec("a", t, partition=1, offset=7), _rec("b", t + 1_000_000, partition=1, offset=8),
            _rec("c", t + 999_999, partition=0, offset=3)]
    files = build_files(rows, "", "test")
    assert [f.key.rsplit("/", 1)[0] for f in files] == ["transactions/date=2026-11-22/hour=23",
                                                        "transactions/date=2026-11-23/hour=00"]
    late, early = files
    assert late.manifest["records"] == 2 and early.manifest["records"] == 1
    assert late.manifest["partitions"] == [{"partition": 0, "first_offset": 3, "last_offset": 3},
                                           {"partition": 1, "first_offset": 7, "last_offset": 7}]
    assert late.manifest["sha256"] == hashlib.sha256(late.data).hexdigest()
    assert late.manifest["min_event_time"] == "2026-11-22T23:59:59.000000Z"
    assert late.manifest["max_event_time"] == "2026-11-22T23:59:59.999999Z"
    again = build_files(rows, "", "test")
    assert [(f.key, f.data) for f in again] == [(f.key, f.data) for f in files]  # a redelivery overwrites
    assert file_name("a.b", {2: (1, 5)}) != file_name("a.b", {2: (1, 6)})
    long = file_name("t", {p: (p, p + 1) for p in range(64)})
    assert len(long) < 200 and long == file_name("t", {p: (p, p + 1) for p in range(64)})


def test_parquet_columns_and_round_trip() -> None:
    t = _us("2026-11-22T10:00:00Z") + 123_456
    rows = [_rec("a", t, payload=b"\x00\xffbinary"), ArchivedRecord("b", DS, "s", t, t, "application/json", None,
                                                                  b"{}", "x", 2, 9)]
    f = build_files(rows, "", "w")[0]
    schema = pq.read_schema(io.BytesIO(f.data))
    assert schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("payload").type == pa.binary() and schema.field("key").type == pa.binary()
    assert schema.names == ["event_id", "dataset", "source", "event_time", "ingest_time", "content_type", "key",
                            "payload", "kafka_topic", "kafka_partition", "kafka_offset"]
    assert verified_rows(f.data, f.manifest, "k") == rows


def test_a_changed_byte_or_count_is_refused_naming_the_file() -> None:
    f = build_files([_rec("a", _us("2026-11-22T10:00:00Z"))], "", "w")[0]
    broken = bytearray(f.data)
    broken[len(broken) // 2] ^= 0x01
    with pytest.raises(LooplineError, match=r"s3://x/file\.parquet: sha256"):
        verified_rows(bytes(broken), f.manifest, "s3://x/file.parquet")
    with pytest.raises(LooplineError, match="1 rows, its manifest says 2"):
        verified_rows(f.data, {**f.manifest, "records": 2}, "k")
    with pytest.raises(LooplineError, match="not JSON"):
        read_manifest(b"{", "m")
    with pytest.raises(LooplineError, match="schema version 99"):
        read_manifest(json.dumps({**f.manifest, "schema_version": 99}).encode(), "m")


def test_select_keeps_the_window_once_per_id_in_event_time_order() -> None:
    t1, t2 = _us("2026-11-22T23:00:00Z"), _us("2026-11-23T01:00:00Z")
    rows = [_rec("late", t2 - 1), _rec("at-end", t2), _rec("at-start", t1), _rec("before", t1 - 1),
            _rec("dup", t1 + 5, offset=1, ingest_us=1, payload=b"first"),
            _rec("dup", t1 + 5, offset=9, ingest_us=2, payload=b"fixed")]
    chosen, repeats = select(rows, t1, t2)
    assert [r.event_id for r in chosen] == ["at-start", "dup", "late"] and repeats == 1
    assert chosen[1].payload == b"fixed"  # the copy ingested last (a redriven fix) wins


def test_times_are_zoned_iso_or_epoch_seconds() -> None:
    assert parse_instant("2026-11-22T23:00:00Z") == _us("2026-11-22T23:00:00Z")
    assert parse_instant("2026-11-23T00:00:00+01:00") == _us("2026-11-22T23:00:00Z")
    assert parse_instant("1795384800") == 1795384800 * 1_000_000
    assert parse_instant("1795384800.25") == 1795384800 * 1_000_000 + 250_000
    assert parse_instant("2026-11-22T23:00:00.000001Z") == _us("2026-11-22T23:00:00Z") + 1
    for bad in ("2026-11-22T23:00:00", "yesterday", "nan", "inf"):
        with pytest.raises(ReplayError):
            parse_instant(bad)


# --- ingest writing the archive, replay reading it --------------------------------------------------------

T0 = _us("2026-11-22T22:00:00Z") // 1_000_000  # epoch seconds; the events span 22:00 .. 01:40 over two dates
WINDOW = ("2026-11-22T23:00:00Z", "2026-11-23T01:00:00Z")


def _events() -> list[tuple[str, float, bytes, str]]:
    """(event id, event time s, raw bytes, content type): JSON written in odd ways, and protobuf."""
    out = []
    for i in range(80):
        ts = T0 + i * 157.25  # 80 events, 22:00:00 .. 01:27:00
        txn = transaction(f"a-{i:03d}", i, ts)
        if i % 3 == 0:
            raw = json.dumps(txn, indent=1, ensure_ascii=False).replace('"EUR"', '"EUR" ').encode()
        elif i % 3 == 1:
            raw = json.dumps(dict(reversed(txn.items())), separators=(",", ":")).encode()
        else:
            raw = Transaction(**txn).SerializeToString()
        out.append((f"a-{i:03d}", ts, raw, "application/x-protobuf" if i % 3 == 2 else "application/json"))
    # the window's edges: the start is in, the end is out, the last microsecond-ish before it is in
    for eid, ts in (("edge-start", T0 + 3600), ("edge-end", T0 + 3 * 3600), ("edge-before-end", T0 + 3 * 3600 - 0.5),
                    ("edge-before-start", T0 + 3600 - 0.5)):
        out.append((eid, ts, json.dumps({**transaction(eid, 7, ts), "note": "grüße"}, ensure_ascii=False).encode(),
                    "application/json"))
    return out


def _customer(data: bytes, ctype: str) -> str:
    if ctype == "application/json":
        return str(json.loads(data)["customer_id"])
    return Transaction.FromString(data).customer_id


def _in_window(ts: float) -> bool:
    return T0 + 3600 <= ts < T0 + 3 * 3600


def _cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, ["replay", *args], env=env)


async def _replay(env: dict[str, str], *args: str, code: int = 0) -> Any:
    result = await asyncio.to_thread(_cli, env, *args)
    assert result.exit_code == code, result.output
    return result


async def _archive(store: ObjectStore, root: str) -> dict[str, dict[str, Any]]:
    """manifest key -> manifest, for every manifest under ``root``."""
    keys = await store.list_keys(BUCKET, root)
    return {k: json.loads(await store.get_bytes(BUCKET, k)) for k in sorted(keys) if k.endswith(MANIFEST)}


async def _records(bootstrap: str, topic: str) -> list[Record]:
    return await quiet(bootstrap, topic, 0, wait_s=0)


@dataclass
class _Run:
    """One test's stack variables, names and what it published."""

    env: dict[str, str]
    namer: TopicNamer
    store: ObjectStore
    events: list[tuple[str, float, bytes, str]]
    customer: dict[str, str]

    @property
    def root(self) -> str:
        return f"{self.namer.prefix}/"

    @property
    def bootstrap(self) -> str:
        return self.env["LOOPLINE_KAFKA_BOOTSTRAP"]

    @property
    def settled(self) -> dict[str, list[str]]:
        """Ingest and its archiver have committed their inputs to the end."""
        n = self.namer
        return {n.group("ingest"): [n.raw(DS)], n.group("ingest-archive"): [n.ingested(DS)]}


async def test_archive_then_replay_round_trip(isolated: dict[str, str], services: Callable[..., ServiceSet],
                                             publisher: Publisher, store: ObjectStore) -> None:
    prefix = isolated["LOOPLINE_TOPIC_PREFIX"]
    services("ingest", env={"ingest": {"LOOPLINE_ARCHIVE_PREFIX": prefix, "LOOPLINE_ARCHIVE_LINGER_MS": "1500"}})
    events = _events()
    run = _Run({**isolated, "LOOPLINE_ARCHIVE_PREFIX": prefix}, TopicNamer(prefix), store, events,
               {eid: _customer(data, ctype) for eid, _ts, data, ctype in events})
    raw = run.namer.raw(DS)
    for eid, _ts, data, ctype in events:
        await publisher.publish(raw, data, key=run.customer[eid], content_type=ctype, headers=[(SOURCE, "pos-7")])
    await publisher.publish(raw, events[0][2], key="c0", content_type=events[0][3])  # a duplicate: not archived

    archived, manifests = await _archive_holds_every_event_once(run)
    fresh, wanted = await _sub_window_replays_byte_for_byte(run, archived)
    await _replay_into_raw_is_forwarded_not_archived_again(run, archived, wanted)
    await _empty_windows_and_bad_arguments_publish_nothing(run, fresh, len(wanted))
    await _tampered_file_is_refused(run, manifests, fresh, len(wanted))


async def _archive_holds_every_event_once(run: _Run) -> tuple[dict[str, ArchivedRecord], dict[str, dict[str, Any]]]:
    """Every event once, filed by event-time hour, each file true to its manifest."""
    ingested = run.namer.ingested(DS)
    await quiet(run.bootstrap, ingested, len(run.events), wait_s=0, settled=run.settled)
    manifests = await _archive(run.store, run.root)
    assert manifests, "nothing archived"
    rows: list[ArchivedRecord] = []
    for mkey, m in manifests.items():
        key = mkey.removesuffix(MANIFEST) + PARQUET
        data = await run.store.get_bytes(BUCKET, key)
        assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["bytes"] == len(data)
        assert m["schema_version"] == 1 and m["writer"] == "ingest" and m["topic"] == ingested
        file_rows = verified_rows(data, m, key)
        assert m["records"] == len(file_rows)
        for r in file_rows:  # each row sits in the hour its event time says, and in its manifest's bounds
            assert key.startswith(hour_prefix(run.root, DS, r.event_time_us - r.event_time_us % H))
            assert m["min_event_time"] <= datetime.fromtimestamp(r.event_time_us / 1e6, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ") <= m["max_event_time"]
            part = next(p for p in m["partitions"] if p["partition"] == r.partition)
            assert part["first_offset"] <= r.offset <= part["last_offset"]
        rows += file_rows
    by_id = Counter(r.event_id for r in rows)
    assert sorted(by_id) == sorted(e[0] for e in run.events) and set(by_id.values()) == {1}, by_id.most_common(2)
    dates = {k.split("/date=")[1][:10] for k in manifests}
    hours_seen = {k.split("/hour=")[1][:2] for k in manifests}
    assert dates == {"2026-11-22", "2026-11-23"} and hours_seen == {"22", "23", "00", "01"}
    original = {e[0]: e for e in run.events}
    for r in rows:
        eid, ts, data, ctype = original[r.event_id]
        # the key is the entity key ingest published under (the contract's customer_id)
        assert r.payload == data and r.content_type == ctype and r.key == run.customer[eid].encode()
        assert r.source == "pos-7" and r.event_time_us == round(ts * 1_000_000)
    return {r.event_id: r for r in rows}, manifests


async def _sub_window_replays_byte_for_byte(run: _Run, archived: dict[str, ArchivedRecord]) -> tuple[str, list[str]]:
    """A sub-window replayed to a fresh topic: exactly the window's events, byte for byte, in order."""
    fresh = f"{run.namer.prefix}.replay-check"
    await ensure_topics(run.bootstrap, [fresh], partitions=1)
    dry = json.loads((await _replay(run.env, "--dataset", DS, "--from", WINDOW[0], "--to", WINDOW[1],
                                    "--to-topic", fresh, "--dry-run", "--json")).stdout)
    wanted = sorted(e[0] for e in run.events if _in_window(e[1]))
    assert dry["selected"] == len(wanted) and dry["published"] == 0 and dry["hours"] == 2
    assert await _records(run.bootstrap, fresh) == [], "a dry run publishes nothing"
    out = json.loads((await _replay(run.env, "--dataset", DS, "--from", WINDOW[0], "--to", WINDOW[1],
                                    "--to-topic", fresh, "--json")).stdout)
    assert out["published"] == len(wanted) and out["duplicates"] == 0
    await read_topic(run.bootstrap, fresh, len(wanted))
    got = await _records(run.bootstrap, fresh)  # all of it, to see that nothing beyond the window came
    assert sorted(r.header(EVENT_ID) or "" for r in got) == wanted
    assert "edge-start" in wanted and "edge-before-end" in wanted
    assert "edge-end" not in wanted and "edge-before-start" not in wanted
    for r in got:
        a = archived[r.header(EVENT_ID) or ""]
        assert r.value == a.payload and r.key == a.key  # byte for byte
        assert r.header(CONTENT_TYPE) == a.content_type and r.header(SOURCE) == "pos-7"
        assert r.header(REPLAY) == out["replay_id"]
    times = [archived[r.header(EVENT_ID) or ""].event_time_us for r in sorted(got, key=lambda r: r.offset)]
    assert times == sorted(times), "republished in event-time order"
    return fresh, wanted


async def _replay_into_raw_is_forwarded_not_archived_again(run: _Run, archived: dict[str, ArchivedRecord],
                                                           wanted: list[str]) -> None:
    """Into the raw topic: ingest forwards the replayed ids again (marked), the archive takes nothing twice."""
    ingested = run.namer.ingested(DS)
    before = await _archive(run.store, run.root)
    first_pass = len(await _records(run.bootstrap, ingested))
    into_raw = json.loads((await _replay(run.env, "--dataset", DS, "--from", str(T0 + 3600), "--to",
                                         str(T0 + 3 * 3600), "--json")).stdout)
    assert into_raw["published"] == len(wanted)
    after = await quiet(run.bootstrap, ingested, first_pass + len(wanted), wait_s=0, settled=run.settled)
    again = [r for r in after if r.header(REPLAY) == into_raw["replay_id"]]
    assert len(after) == first_pass + len(wanted) and len(again) == len(wanted)
    assert sorted(EventIngested.FromString(r.value).metadata.event_id for r in again) == wanted
    for r in again:
        msg = EventIngested.FromString(r.value)
        a = archived[msg.metadata.event_id]
        assert msg.payload == a.payload and r.key == a.key and msg.source == "pos-7"
    assert await _archive(run.store, run.root) == before, "a replay is not archived again"


async def _empty_windows_and_bad_arguments_publish_nothing(run: _Run, fresh: str, published: int) -> None:
    empty = await _replay(run.env, "--dataset", DS, "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T05:00:00Z",
                          "--to-topic", fresh, code=NO_ARCHIVE)
    assert "no archive for transactions in [2026-01-01T00:00:00Z, 2026-01-01T05:00:00Z)" in empty.stderr
    assert "nothing published" in empty.stderr
    # an archived hour whose events all fall outside the window: also nothing
    edge = await _replay(run.env, "--dataset", DS, "--from", str(T0 + 3 * 3600 + 1700), "--to",
                         str(T0 + 3 * 3600 + 1800), "--to-topic", fresh, code=NO_ARCHIVE)
    assert "no archived event for transactions" in edge.stderr
    bad = await _replay(run.env, "--dataset", DS, "--from", WINDOW[1], "--to", WINDOW[0], code=1)
    assert "must be after" in bad.stderr
    naive = await _replay(run.env, "--dataset", DS, "--from", "2026-11-22T23:00:00", "--to", WINDOW[1], code=1)
    assert "has no zone" in naive.stderr
    missing = await _replay(run.env, "--dataset", DS, "--from", WINDOW[0], "--to", WINDOW[1],
                            "--to-topic", f"{run.namer.prefix}.no-such-topic", code=1)
    assert "does not exist" in missing.stderr
    assert len(await _records(run.bootstrap, fresh)) == published


async def _tampered_file_is_refused(run: _Run, manifests: dict[str, dict[str, Any]], fresh: str,
                                    published: int) -> None:
    """A tampered Parquet file: refused, naming it, and nothing of the window is published."""
    victim = next(k for k in sorted(manifests) if "/hour=00/" in k).removesuffix(MANIFEST) + PARQUET
    data = bytearray(await run.store.get_bytes(BUCKET, victim))
    data[len(data) // 2] ^= 0x20
    await run.store.put_bytes(BUCKET, victim, bytes(data))
    refused = await _replay(run.env, "--dataset", DS, "--from", WINDOW[0], "--to", WINDOW[1], "--to-topic", fresh,
                            code=1)
    assert f"s3://{BUCKET}/{victim}" in refused.stderr and "sha256" in refused.stderr
    assert len(await _records(run.bootstrap, fresh)) == published, "nothing published after a refusal"
    # a manifest whose file is gone is refused; a file without a manifest (a write cut short) is skipped
    gone_manifest = next(k for k in sorted(manifests) if "/hour=22/" in k)
    gone = gone_manifest.removesuffix(MANIFEST) + PARQUET
    saved = await run.store.get_bytes(BUCKET, gone)
    await asyncio.to_thread(run.store.client.remove_object, BUCKET, gone)
    missing = await _replay(run.env, "--dataset", DS, "--from", "2026-11-22T22:00:00Z", "--to", "2026-11-22T23:00:00Z",
                            "--dry-run", code=1)
    assert f"s3://{BUCKET}/{gone}, which is missing" in missing.stderr
    await run.store.put_bytes(BUCKET, gone, saved)
    orphan = gone.rsplit("/", 1)[0] + "/half-written.parquet"
    await run.store.put_bytes(BUCKET, orphan, b"PAR1 cut short")
    skipped = await _replay(run.env, "--dataset", DS, "--from", "2026-11-22T22:00:00Z", "--to",
                            "2026-11-22T23:00:00Z", "--dry-run")
    assert f"skipped s3://{BUCKET}/{orphan}: no manifest" in skipped.stdout
    # a window over all of time is one listing, and refuses the damaged hour like any other
    everything = await _replay(run.env, "--dataset", DS, "--from", "0", "--to", "4102444800", "--dry-run", code=1)
    assert f"s3://{BUCKET}/{victim}" in everything.stderr
    # a window that does not reach the damaged hour still replays
    ok = json.loads((await _replay(run.env, "--dataset", DS, "--from", WINDOW[0], "--to", "2026-11-23T00:00:00Z",
                                   "--to-topic", fresh, "--dry-run", "--json")).stdout)
    assert ok["selected"] == sum(1 for e in run.events if T0 + 3600 <= e[1] < T0 + 2 * 3600)


# --- the object store away: the archive waits, ingest does not --------------------------------------------


class _Gate:
    """A TCP proxy to the S3 store that a test can close and open again (an outage it controls)."""

    def __init__(self, target: str) -> None:
        self.host, port = target.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self.conns: set[asyncio.StreamWriter] = set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(self.host, self.port)
        self.conns |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.conns:
            w.close()
        self.conns.clear()
        await self.server.wait_closed()


async def test_store_outage_delays_the_archive_and_loses_nothing(
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher,
        store: ObjectStore) -> None:
    prefix = isolated["LOOPLINE_TOPIC_PREFIX"]
    gate = _Gate(isolated["LOOPLINE_S3_ENDPOINT"])
    await gate.open()
    svc = services("ingest", env={"ingest": {
        "LOOPLINE_ARCHIVE_PREFIX": prefix, "LOOPLINE_ARCHIVE_LINGER_MS": "500",
        "LOOPLINE_S3_ENDPOINT": f"http://127.0.0.1:{gate.listen_port}", "LOOPLINE_RETRY_BUDGET_S": "600",
        "LOOPLINE_RETRY_MAX_ATTEMPTS": "1000", "LOOPLINE_RETRY_MAX_BACKOFF_S": "1"}})
    namer = TopicNamer(prefix)
    bootstrap = isolated["LOOPLINE_KAFKA_BOOTSTRAP"]
    await gate.close()  # the store is away before the first record
    ids = [f"o-{i:02d}" for i in range(30)]
    for i, eid in enumerate(ids):
        txn = transaction(eid, i, T0 + i * 400)
        await publisher.publish(namer.raw(DS), json.dumps(txn).encode(), key=txn["customer_id"],
                                content_type="application/json")
    # ingest goes on without the store; the archive neither writes nor commits
    await quiet(bootstrap, namer.ingested(DS), len(ids), wait_s=0, settled={namer.group("ingest"): [namer.raw(DS)]})
    log = svc.running["ingest"].log
    async with asyncio.timeout(90):  # the S3 client retries inside one attempt first; then the bus backs off
        while log.read_text().count("transient failure: partition paused, will retry") < 2:
            await asyncio.sleep(0.2)
    assert await _archive(store, f"{prefix}/") == {}
    assert await _records(bootstrap, namer.dlq(DS)) == [], "an outage within the budget dead-letters nothing"
    await gate.open()  # the same port: the service's endpoint is unchanged
    await quiet(bootstrap, namer.ingested(DS), 0, wait_s=0,
                settled={namer.group("ingest-archive"): [namer.ingested(DS)]}, timeout=120)
    manifests = await _archive(store, f"{prefix}/")
    rows = [r for m in manifests for r in verified_rows(
        await store.get_bytes(BUCKET, m.removesuffix(MANIFEST) + PARQUET), manifests[m], m)]
    counts = Counter(r.event_id for r in rows)
    assert sorted(counts) == ids and set(counts.values()) == {1}
    await gate.close()
