"""The raw archive's format: where a file goes, its columns, its manifest. Shared by the writer (ingest)
and the reader (``loopline replay``), so the two cannot drift apart. Pure: no object store, no Kafka.

Layout, in bucket ``loopline-raw`` under an optional root (``LOOPLINE_ARCHIVE_PREFIX``)::

    <root><dataset>/date=YYYY-MM-DD/hour=HH/<name>.parquet         the records (event time, UTC)
    <root><dataset>/date=YYYY-MM-DD/hour=HH/<name>.manifest.json   sha256, count, offsets, times

``<name>`` is made from the Kafka topic and the offset range of each partition the file's records
came from, so a batch redelivered with the same boundaries overwrites its files instead of adding
copies (a redelivery cut differently adds files whose records repeat; the reader dedupes by event id).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loopline_core.errors import invalid

BUCKET = "loopline-raw"
SCHEMA_VERSION = 1
PARQUET = ".parquet"
MANIFEST = ".manifest.json"
HOUR_US = 3_600_000_000
_MAX_NAME = 180

SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("ingest_time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("content_type", pa.string(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("payload", pa.binary(), nullable=False),
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
], metadata={"loopline.archive.schema_version": str(SCHEMA_VERSION)})


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    """One ingested event as the archive keeps it: the producer's exact bytes and where they were read.

    Times are integer microseconds since the epoch (UTC), the Parquet column's own unit, so a value
    read back compares equal to the one written.
    """

    event_id: str
    dataset: str
    source: str
    event_time_us: int
    ingest_time_us: int
    content_type: str
    key: bytes | None
    payload: bytes
    topic: str
    partition: int
    offset: int

    @property
    def hour(self) -> int:
        """The start of the event-time hour this record is filed under (microseconds)."""
        return self.event_time_us - self.event_time_us % HOUR_US


def hour_prefix(root: str, dataset: str, hour_us: int) -> str:
    """``<root><dataset>/date=YYYY-MM-DD/hour=HH/`` for the hour starting at ``hour_us``."""
    t = datetime.fromtimestamp(hour_us // 1_000_000, UTC)
    return f"{root}{dataset}/date={t:%Y-%m-%d}/hour={t:%H}/"


def hours(start_us: int, end_us: int) -> list[int]:
    """The starts of the hours that overlap the window ``[start_us, end_us)``, in order."""
    if end_us <= start_us:
        return []
    first = start_us - start_us % HOUR_US
    return list(range(first, end_us, HOUR_US))


def key_range(root: str, dataset: str, start_us: int, end_us: int) -> tuple[str, str, str, str]:
    """``(prefix, start_after, low, high)`` to list a window's files in one ordered listing: the keys
    under ``prefix`` listed after ``start_after`` that are ``>= low`` and ``< high`` are exactly those
    of the hours overlapping ``[start_us, end_us)`` (``date=YYYY-MM-DD/hour=HH`` sorts as time does).
    One listing costs what the window holds, not one request per hour of a window that may span years.

    ``start_after`` points just past the previous hour's files rather than at the first hour's
    folder: SeaweedFS skips a whole folder named by ``start_after``, so ``low`` filters the rest.
    """
    first = start_us - start_us % HOUR_US
    last = end_us - 1 - (end_us - 1) % HOUR_US
    return (f"{root}{dataset}/", hour_prefix(root, dataset, first - HOUR_US) + "~",
            hour_prefix(root, dataset, first), hour_prefix(root, dataset, last + HOUR_US))


def file_name(topic: str, ranges: dict[int, tuple[int, int]]) -> str:
    """A file's name (no extension) from its topic and ``{partition: (first, last offset)}``.

    Deterministic: the same records from the same offsets always get the same name. A name that
    would be too long (many partitions) becomes the topic plus a hash of the ranges.
    """
    spec = "+".join(f"p{p}-{a:012d}-{b:012d}" for p, (a, b) in sorted(ranges.items()))
    name = f"{_safe(topic)}+{spec}"
    if len(name) > _MAX_NAME:
        name = f"{_safe(topic)}+h{hashlib.sha256(spec.encode()).hexdigest()[:32]}"
    return name


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


@dataclass(frozen=True)
class ArchiveFile:
    """One file to write: its object keys, its Parquet bytes and its manifest."""

    key: str
    manifest_key: str
    data: bytes
    manifest: dict[str, Any]


def build_files(records: Sequence[ArchivedRecord], root: str, writer: str) -> list[ArchiveFile]:
    """Group ``records`` by dataset and event-time hour: one Parquet file and manifest per group.

    Rows keep their consumed order (partition by partition, offset order), so the same records give
    the same bytes. ``writer`` names what wrote the file (kept in the manifest).
    """
    groups: dict[tuple[str, int], list[ArchivedRecord]] = {}
    for r in records:
        groups.setdefault((r.dataset, r.hour), []).append(r)
    out = []
    for (dataset, hour), rows in sorted(groups.items()):
        ranges: dict[int, tuple[int, int]] = {}
        for r in rows:
            a, b = ranges.get(r.partition, (r.offset, r.offset))
            ranges[r.partition] = (min(a, r.offset), max(b, r.offset))
        topics = sorted({r.topic for r in rows})
        prefix = hour_prefix(root, dataset, hour) + file_name(",".join(topics), ranges)
        data = to_parquet(rows)
        manifest = {
            "schema_version": SCHEMA_VERSION, "writer": writer, "dataset": dataset,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "records": len(rows),
            "topic": topics[0] if len(topics) == 1 else topics,
            "partitions": [{"partition": p, "first_offset": a, "last_offset": b}
                           for p, (a, b) in sorted(ranges.items())],
            "min_event_time": _iso(min(r.event_time_us for r in rows)),
            "max_event_time": _iso(max(r.event_time_us for r in rows)),
            "hour": _iso(hour), "file": prefix.rsplit("/", 1)[-1] + PARQUET,
        }
        out.append(ArchiveFile(prefix + PARQUET, prefix + MANIFEST, data, manifest))
    return out


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def to_parquet(rows: Iterable[ArchivedRecord]) -> bytes:
    """The rows as Parquet (zstd); no write time or host in the file, so equal rows give equal bytes."""
    rows = list(rows)
    table = pa.table({
        "event_id": [r.event_id for r in rows], "dataset": [r.dataset for r in rows],
        "source": [r.source for r in rows], "event_time": [r.event_time_us for r in rows],
        "ingest_time": [r.ingest_time_us for r in rows], "content_type": [r.content_type for r in rows],
        "key": [r.key for r in rows], "payload": [r.payload for r in rows],
        "kafka_topic": [r.topic for r in rows], "kafka_partition": [r.partition for r in rows],
        "kafka_offset": [r.offset for r in rows],
    }, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def read_manifest(raw: bytes, key: str) -> dict[str, Any]:
    """A manifest's JSON; one that does not parse, lacks its sha256 or record count, or is of a
    schema version this code does not know, is refused naming ``key``."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"manifest {key} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("sha256"), str) or not isinstance(doc.get("records"), int):
        raise invalid(f"manifest {key} lacks sha256 or records")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise invalid(f"manifest {key} has schema version {doc.get('schema_version')!r}; "
                      f"this reader knows {SCHEMA_VERSION}")
    return doc


def verified_rows(data: bytes, manifest: dict[str, Any], key: str) -> list[ArchivedRecord]:
    """The rows of a Parquet file, once its bytes hash to the manifest's sha256 and its row count is
    the manifest's; anything else is refused naming ``key`` (the file is not read)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest["sha256"]:
        raise invalid(f"{key}: sha256 {actual} does not match its manifest's {manifest['sha256']} "
                      "(the file was changed or damaged after it was written)")
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:  # pragma: no cover - a file that hashes right was written by us
        raise invalid(f"{key}: not readable as Parquet: {exc}") from exc
    if table.num_rows != manifest["records"]:
        raise invalid(f"{key}: {table.num_rows} rows, its manifest says {manifest['records']}")
    cols = {name: table[name].to_pylist() for name in ("event_id", "dataset", "source", "content_type", "key",
                                                       "payload", "kafka_topic", "kafka_partition",
                                                       "kafka_offset")}
    times = {name: table[name].cast(pa.int64()).to_pylist() for name in ("event_time", "ingest_time")}
    return [ArchivedRecord(cols["event_id"][i], cols["dataset"][i], cols["source"][i], times["event_time"][i],
                           times["ingest_time"][i], cols["content_type"][i], cols["key"][i], cols["payload"][i],
                           cols["kafka_topic"][i], cols["kafka_partition"][i], cols["kafka_offset"][i])
            for i in range(table.num_rows)]

