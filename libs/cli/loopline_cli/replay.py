"""``loopline replay``: republish what the raw archive holds for an event-time window.

Reads ``LOOPLINE_KAFKA_BOOTSTRAP``, ``LOOPLINE_TOPIC_PREFIX``, the ``LOOPLINE_S3_*`` variables and
``LOOPLINE_ARCHIVE_PREFIX`` (the key prefix ingest writes under), nothing else.

What it does, in order: list the archive's hour partitions that overlap ``[--from, --to)``; read each
file's manifest and refuse the whole replay, naming the file, when a file's bytes do not hash to its
manifest's sha256 (or its row count differs), before anything is published; keep the rows whose event
time is in the window, one per event id (the most recently ingested copy), ordered by event time;
publish each to ``loopline.raw.<dataset>`` (or ``--to-topic``) with its key, its exact payload bytes,
``x-loopline-event-id``, ``content-type``, ``x-loopline-source`` and ``x-loopline-replay: <replay id>``.

Ingest forwards a replayed record even though it saw its id before, and does not archive it again.
Every sink downstream is keyed by event id, so replaying what the platform already holds duplicates
nothing, and replaying after a sink was emptied refills it (a backfill is one command).

Exit status: 0 when it published (or, with ``--dry-run``, would publish) at least one record; 3 when
the window holds no archived event (nothing is published: not a failure of the tool, but a script
should notice); 1 for an error (a file that fails its check, a missing topic, an unreachable store).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from loopline_core.archive import (
    BUCKET,
    MANIFEST,
    PARQUET,
    ArchivedRecord,
    hours,
    key_range,
    read_manifest,
    verified_rows,
)
from loopline_core.errors import LooplineError
from loopline_core.kafka.records import CONTENT_TYPE, EVENT_ID, REPLAY, SOURCE
from loopline_core.kafka.topics import TopicNamer
from loopline_core.objstore import ObjectStore
from minio.error import S3Error
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.text import Text

NO_ARCHIVE = 3
"""Exit status of a replay whose window holds no archived event."""


class ReplaySettings(BaseSettings):
    """The connection values a replay needs (no database)."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", extra="ignore")

    kafka_bootstrap: str
    topic_prefix: str = "loopline"
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: SecretStr
    s3_region: str = "us-east-1"
    archive_prefix: str = ""


class ReplayError(Exception):
    """What the operator must fix; printed as one line, exit status 1."""


def parse_instant(text: str) -> int:
    """Microseconds since the epoch from ISO-8601 with a zone (``2026-11-22T10:00:00Z``) or epoch
    seconds (``1795341600``, ``1795341600.5``). A time without a zone is refused: read in the host's
    zone it would silently shift the window."""
    raw = text.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ReplayError(f"{text!r} is not a time")
        return round(seconds * 1_000_000)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{text!r} is neither ISO-8601 nor epoch seconds") from None
    if parsed.tzinfo is None:
        raise ReplayError(f"{text!r} has no zone (add Z or an offset such as +01:00)")
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def select(records: list[ArchivedRecord], start_us: int, end_us: int) -> tuple[list[ArchivedRecord], int]:
    """The records to republish and how many in-window copies were dropped as repeats of an event id.

    In the window ``[start_us, end_us)`` by event time; one per event id, the most recently ingested
    copy (a record redriven after a fix supersedes its first version); ordered by event time, then
    event id, so the order is the same on every run.
    """
    chosen: dict[str, ArchivedRecord] = {}
    kept = 0
    for r in records:
        if start_us <= r.event_time_us < end_us:
            kept += 1
            old = chosen.get(r.event_id)
            if old is None or (r.ingest_time_us, r.offset) > (old.ingest_time_us, old.offset):
                chosen[r.event_id] = r
    out = sorted(chosen.values(), key=lambda r: (r.event_time_us, r.event_id))
    return out, kept - len(out)


def _list_window(store: ObjectStore, root: str, dataset: str, start_us: int, end_us: int) -> list[str]:
    """The keys of the archive's hour partitions overlapping the window, in one ordered listing."""
    prefix, start_after, low, high = key_range(root, dataset, start_us, end_us)
    out = []
    for obj in store.client.list_objects(BUCKET, prefix=prefix, recursive=True, start_after=start_after):
        name = obj.object_name or ""
        if name >= high:
            break
        if name >= low:
            out.append(name)
    return out


def headers_for(r: ArchivedRecord, replay_id: str) -> list[tuple[str, bytes]]:
    """Headers of a republished raw record: its event id, content type, source and the replay id."""
    return [(EVENT_ID, r.event_id.encode()), (CONTENT_TYPE, r.content_type.encode()),
            (SOURCE, r.source.encode()), (REPLAY, replay_id.encode())]


@dataclass
class ReplayReport:
    """What a replay did (or, dry, would do)."""

    replay_id: str
    dataset: str
    start_us: int
    end_us: int
    to: str
    dry_run: bool
    hours: int = 0
    files: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Parquet files without a manifest (a write cut short; their batch was written again)."""
    rows_read: int = 0
    in_window: int = 0
    duplicates: int = 0
    published: int = 0
    selected: list[ArchivedRecord] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"replay_id": self.replay_id, "dataset": self.dataset, "from": iso(self.start_us),
                "to": iso(self.end_us), "topic": self.to, "dry_run": self.dry_run, "hours": self.hours,
                "files": self.files, "orphans": self.orphans, "rows_read": self.rows_read,
                "in_window": self.in_window, "duplicates": self.duplicates, "selected": len(self.selected),
                "published": self.published}


async def replay(settings: ReplaySettings, dataset: str, start_us: int, end_us: int, *, to_topic: str | None,
                 dry_run: bool, replay_id: str | None = None) -> ReplayReport:
    """Verify, select and republish the archive's records of ``dataset`` in ``[start_us, end_us)``.

    Every file of the window is checked before the first record is published, so a damaged file
    stops the replay with nothing sent.

    Raises:
        ReplayError: a file fails its check, a manifest names a missing file, the topic is missing.
    """
    if end_us <= start_us:
        raise ReplayError(f"--to ({iso(end_us)}) must be after --from ({iso(start_us)})")
    root = settings.archive_prefix.strip("/") + "/" if settings.archive_prefix.strip("/") else ""
    topic = to_topic or TopicNamer(settings.topic_prefix).raw(dataset)
    rep = ReplayReport(replay_id or f"replay-{uuid.uuid4().hex[:16]}", dataset, start_us, end_us, topic, dry_run)
    store = ObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value(),
                        region=settings.s3_region)
    rows: list[ArchivedRecord] = []
    rep.hours = len(hours(start_us, end_us))
    keys = set(await asyncio.to_thread(_list_window, store, root, dataset, start_us, end_us))
    for mkey in sorted(k for k in keys if k.endswith(MANIFEST)):
        key = mkey.removesuffix(MANIFEST) + PARQUET
        if key not in keys:
            raise ReplayError(f"s3://{BUCKET}/{mkey} names s3://{BUCKET}/{key}, which is missing")
        try:
            manifest = read_manifest(await store.get_bytes(BUCKET, mkey), f"s3://{BUCKET}/{mkey}")
            rows += verified_rows(await store.get_bytes(BUCKET, key), manifest, f"s3://{BUCKET}/{key}")
        except LooplineError as exc:
            raise ReplayError(f"refused: {exc.message}") from exc
        rep.files.append(key)
    rep.orphans = sorted(k for k in keys if k.endswith(PARQUET) and k.removesuffix(PARQUET) + MANIFEST not in keys)
    rep.rows_read = len(rows)
    rep.selected, rep.duplicates = select(rows, start_us, end_us)
    rep.in_window = len(rep.selected) + rep.duplicates
    if dry_run or not rep.selected:
        return rep
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=False,
                                client_id="loopline-replay", linger_ms=5, max_batch_size=1024 * 1024,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        metadata = await producer.client.fetch_all_metadata()
        if topic not in metadata.topics():
            raise ReplayError(f"topic {topic} does not exist")
        # One send per record, awaited together: per partition the producer keeps the send order,
        # which is event-time order, so one entity's events arrive in the order they happened.
        futures = [await producer.send(topic, r.payload, key=r.key, headers=headers_for(r, rep.replay_id))
                   for r in rep.selected]
        await asyncio.gather(*futures)
        rep.published = len(futures)
    finally:
        await producer.stop()
    return rep


def _run(work: Any, timeout_s: float) -> ReplayReport:
    async def bounded(settings: ReplaySettings) -> ReplayReport:
        async with asyncio.timeout(timeout_s):
            result: ReplayReport = await work(settings)
            return result

    try:
        settings = ReplaySettings()  # type: ignore[call-arg]  # the connections come from the environment
    except ValidationError as exc:
        missing = ", ".join(f"LOOPLINE_{str(e['loc'][0]).upper()}" for e in exc.errors())
        _fail(f"set {missing} (e.g. `eval \"$(loopline stack env)\"`)")
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(bounded(settings))
    except ReplayError as exc:
        message = str(exc)
    except TimeoutError:
        message = f"replay did not finish within {timeout_s:g}s"
    except (KafkaError, OSError) as exc:
        message = f"broker at {settings.kafka_bootstrap} unreachable ({type(exc).__name__})"
    except S3Error as exc:
        message = f"object store at {settings.s3_endpoint}: {exc.code} {exc.message}"
    finally:
        client_log.setLevel(level)
    _fail(message)
    raise AssertionError  # unreachable: _fail exits


def _fail(message: str) -> None:
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(1)


def replay_command(
        dataset: Annotated[str, typer.Option("--dataset", help="the dataset to replay, e.g. transactions")],
        start: Annotated[str, typer.Option("--from", help="window start, inclusive: ISO-8601 with a zone "
                                           "or epoch seconds (event time)")],
        end: Annotated[str, typer.Option("--to", help="window end, exclusive: ISO-8601 with a zone or epoch "
                                         "seconds (event time)")],
        to_topic: Annotated[str | None, typer.Option("--to-topic", help="publish here instead of "
                                                     "<prefix>.raw.<dataset>")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="verify and count; publish nothing")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable summary")] = False,
        timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 600.0) -> None:
    """Republish the raw archive's records of an event-time window [--from, --to) to the raw topic.

    Records keep their event ids, keys and exact bytes, so downstream sinks (keyed by event id) take
    nothing twice; after a sink was emptied, a replay refills it. Exit status 3: the window holds no
    archived event (nothing published); 1: an error, e.g. a file whose sha256 does not match its
    manifest (nothing published).
    """
    try:
        start_us, end_us = parse_instant(start), parse_instant(end)
    except ReplayError as exc:
        _fail(str(exc))
        return
    rep = _run(lambda s: replay(s, dataset, start_us, end_us, to_topic=to_topic, dry_run=dry_run), timeout)
    if as_json:
        typer.echo(json.dumps(rep.as_json(), indent=2))
    else:
        out = Console(highlight=False)
        verb = "would publish" if dry_run else "published"
        count = len(rep.selected) if dry_run else rep.published
        out.print(Text(f"{rep.replay_id}: {rep.dataset} [{iso(rep.start_us)}, {iso(rep.end_us)}): "
                       f"{len(rep.files)} files in {rep.hours} hours, {rep.rows_read} rows read, "
                       f"{rep.in_window} in the window ({rep.duplicates} repeats dropped), "
                       f"{verb} {count} to {rep.to}"), soft_wrap=True)
        for orphan in rep.orphans:
            out.print(Text(f"skipped s3://{BUCKET}/{orphan}: no manifest (a write cut short)"), soft_wrap=True)
    if not rep.selected:
        what = "no archive" if not rep.files else "no archived event"
        Console(stderr=True).print(Text(f"{what} for {rep.dataset} in [{iso(rep.start_us)}, {iso(rep.end_us)}): "
                                        "nothing published"), soft_wrap=True)
        raise typer.Exit(NO_ARCHIVE)
