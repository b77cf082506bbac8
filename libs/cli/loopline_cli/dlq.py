"""``loopline dlq``: look into a dataset's dead-letter topic and send its records back to ingest.

Only ``LOOPLINE_KAFKA_BOOTSTRAP`` and ``LOOPLINE_TOPIC_PREFIX`` are read, so an operator can run
these commands without the Postgres and S3 variables that services need.

Redrive progress (the part that has to be right twice):

* ``<prefix>.dlq-redrive.<dataset>`` holds, per DLQ partition, a committed offset below which every
  dead letter has been dealt with by some redrive (republished, or matched but not redrivable).
* A redrive with ``--reason``/``--kind`` does *not* commit that group past the records its filter
  skipped: those are left for a later redrive. It records what it did in a group of its own,
  ``<prefix>.dlq-redrive.<dataset>.only.<filter>`` (the filter base64url-encoded in the name, because
  the local broker keeps no commit metadata), whose offset says "every record below here that
  matches this filter has been dealt with". Every redrive reads those groups and skips the records
  one of them covers, then moves the main group up to the first record nothing has covered yet.

So each dead letter is republished once, whatever sequence of filtered and unfiltered redrives
runs (``--reason a``, ``--reason a`` again, ``--kind X``, no filter), except for the chunk in flight
when a redrive is killed: that chunk is published again next time (at least once), and ingest
drops the repeats by event id. Two redrives of one dataset must not run at the same time.
Consumer-group offsets expire on brokers that expire idle groups (Kafka's
``offsets.retention.minutes``); after that, a redrive starts again from the oldest dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.kafka.offsets import log_end
from loopline_core.kafka.records import (
    CONTENT_TYPE,
    DLQ_ATTEMPTS,
    DLQ_DETAIL,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SOURCE,
    EVENT_ID,
    MESSAGE_TYPE,
    REDRIVEN_FROM,
)
from loopline_core.kafka.records import SOURCE as SOURCE_NAME
from loopline_core.kafka.topics import TopicNamer
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.table import Table
from rich.text import Text

T = TypeVar("T")

dlq_app = typer.Typer(help="Dead letters: inspect a dataset's DLQ topic, redrive its records to ingest.",
                      no_args_is_help=True)

REASON, KIND, SOURCE, ATTEMPTS, DETAIL_PREFIX = DLQ_REASON, DLQ_KIND, DLQ_SOURCE, DLQ_ATTEMPTS, DLQ_DETAIL
ENVELOPE_TYPE = "loopline.ingest.v1.EventIngested"
_REPLACED = {CONTENT_TYPE, MESSAGE_TYPE, EVENT_ID, REDRIVEN_FROM}


class DlqSettings(BaseSettings):
    """The two connection values these commands need (the services' full settings also need a DB)."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", extra="ignore")

    kafka_bootstrap: str
    topic_prefix: str = "loopline"


class DlqError(Exception):
    """A condition the operator must fix (missing topic, bad arguments); printed as one line."""


@dataclass(frozen=True)
class DeadLetter:
    """One record of a DLQ topic, with what the failing consumer wrote in its headers."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    reason: str
    kind: str
    source: str
    attempts: str | None
    details: dict[str, str]
    source_topic: str
    payload: bytes
    """The producer's raw bytes: the value itself, or an envelope's ``payload``."""
    content_type: str
    event_id: str | None
    envelope: bool
    problem: str | None = None
    """Why the record cannot be read as what its source says it is (a broken envelope)."""
    origin: str = ""
    """An envelope's ``source`` (where ingest said the event came from)."""

    def group_key(self, by: str) -> str:
        """The value this record is counted under for ``--by``."""
        if by == "reason":
            return self.reason
        if by == "kind":
            return self.kind
        if by == "source":
            return self.source_topic or "(unknown)"
        return self.details.get(by, "(none)")

    def preview(self, width: int = 60) -> str:
        """The start of the producer's bytes, as text when they are text, else hex."""
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = f"<{len(self.payload)} bytes> {self.payload[:width // 2].hex()}"
        return text if len(text) <= width else text[: width - 1] + "…"

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view of this record for ``--json`` output."""
        return {"partition": self.partition, "offset": self.offset, "source": self.source,
                "key": _text(self.key), "event_id": self.event_id, "reason": self.reason, "kind": self.kind,
                "attempts": self.attempts, "details": self.details, "content_type": self.content_type,
                "envelope": self.envelope, "value_bytes": len(self.payload), "value_preview": self.preview()}


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _json_event_id(raw: bytes) -> str | None:
    """``event_id`` of a JSON object, when it is a non-empty string (ingest's own rule)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = doc.get("event_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None


def parse_dead_letter(partition: int, offset: int, key: bytes | None, value: bytes,
                      headers: Iterable[tuple[str, bytes]], ingested_topic: str) -> DeadLetter:
    """Read a DLQ record: its reason headers, and the producer's bytes and event id inside it.

    Args:
        partition: DLQ partition of the record.
        offset: DLQ offset of the record.
        key: the record's key (the failed record's key, kept by the dead-lettering consumer).
        value: the record's value: raw producer bytes, or an ``EventIngested`` envelope.
        headers: the record's headers.
        ingested_topic: the dataset's ingested topic; records that failed there hold envelopes.

    Returns:
        The parsed dead letter; ``problem`` says why an envelope could not be read, if it could not.
    """
    hdrs = tuple(headers)
    text = {k: v.decode("utf-8", "replace") for k, v in hdrs}
    source = text.get(SOURCE, "")
    source_topic = source.rsplit("/", 2)[0] if source.count("/") >= 2 else ""
    details = {k.removeprefix(DETAIL_PREFIX): v for k, v in text.items()
               if k.startswith(DETAIL_PREFIX) and k not in {REASON, KIND, SOURCE, ATTEMPTS}}
    envelope = source_topic == ingested_topic or text.get(MESSAGE_TYPE) == ENVELOPE_TYPE
    payload, content_type, event_id, problem, origin = value, text.get(CONTENT_TYPE, "application/json"), None, None, ""
    if envelope:
        msg = EventIngested()
        try:
            msg.ParseFromString(value)
        except DecodeError as exc:
            problem = f"envelope does not parse: {exc}"
        else:
            payload, content_type = msg.payload, msg.content_type or "application/json"
            event_id, origin = msg.metadata.event_id or None, msg.source
    # A header set by the producer is what ingest used as the id, so it wins over the payload's field.
    event_id = text.get(EVENT_ID) or event_id or _json_event_id(payload)
    return DeadLetter(partition, offset, key, value, hdrs, text.get(REASON, "(no reason)"),
                      text.get(KIND, "(no kind)"), source, text.get(ATTEMPTS), details, source_topic, payload,
                      content_type, event_id, envelope, problem, origin)


@dataclass(frozen=True)
class Filter:
    """Which dead letters a redrive takes: reason contains ``reason`` and kind equals ``kind``."""

    reason: str | None = None
    kind: str | None = None

    @property
    def everything(self) -> bool:
        return self.reason is None and self.kind is None

    def matches(self, dl: DeadLetter) -> bool:
        """True when ``dl`` is one this filter selects (case-sensitive substring, exact kind)."""
        return (self.reason is None or self.reason in dl.reason) and (self.kind is None or self.kind == dl.kind)

    def encode(self) -> str:
        """This filter as a group-name-safe token (base64url of ``[reason, kind]``, no padding)."""
        return base64.urlsafe_b64encode(json.dumps([self.reason, self.kind]).encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Filter | None:
        """The filter :meth:`encode` made, or None for a token it did not make."""
        try:
            reason, kind = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, ValueError, TypeError):
            return None
        ok = all(v is None or isinstance(v, str) for v in (reason, kind))
        return cls(reason, kind) if ok else None


def redrive_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    """Headers for the republished raw record: the original ones without the dead-letter ones, plus
    content type, the original event id (so ingest keeps it) and where the dead letter came from."""
    out = [(k, v) for k, v in dl.headers if not k.startswith(DETAIL_PREFIX) and k not in _REPLACED]
    out.append((CONTENT_TYPE, dl.content_type.encode()))
    if dl.event_id:
        out.append((EVENT_ID, dl.event_id.encode()))
    out.append((REDRIVEN_FROM, dl.source.encode()))
    if dl.origin and all(k != SOURCE_NAME for k, _ in out):
        out.append((SOURCE_NAME, dl.origin.encode()))  # ingest names the source from it, else from the topic
    return out


def _namer(prefix: str) -> TopicNamer:
    return TopicNamer(prefix)


def _settings() -> DlqSettings:
    try:
        return DlqSettings()  # type: ignore[call-arg]  # kafka_bootstrap comes from the environment
    except ValidationError as exc:
        missing = ", ".join(f"LOOPLINE_{str(e['loc'][0]).upper()}" for e in exc.errors())
        raise DlqError(f"set {missing} (e.g. `eval \"$(loopline stack env)\"`)") from exc


async def _partitions(consumer: AIOKafkaConsumer, *topics: str) -> list[TopicPartition]:
    """Partitions of the first topic; every topic must exist (listing does not create them)."""
    known = await consumer.topics()
    for topic in topics:
        if topic not in known:
            raise DlqError(f"topic {topic} does not exist")
    return [TopicPartition(topics[0], p) for p in sorted(consumer.partitions_for_topic(topics[0]) or ())]


@contextlib.asynccontextmanager
async def _started(client: Any) -> AsyncIterator[Any]:
    try:
        await client.start()
        yield client
    finally:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int,
                chunk: int) -> AsyncIterator[list[Any]]:
    """Yield ``tp``'s records from ``start`` up to (not including) ``end``, ``chunk`` at a time."""
    consumer.assign([tp])
    consumer.seek(tp, start)
    while start < end and await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=chunk)
        records = [r for r in batch.get(tp, []) if r.offset < end]
        if records:
            yield records


def _dead_letter(raw: Any, ingested_topic: str) -> DeadLetter:
    return parse_dead_letter(raw.partition, raw.offset, raw.key, raw.value or b"", raw.headers or (),
                             ingested_topic)


@dataclass
class Group:
    """Dead letters counted under one ``--by`` value, with a few samples."""

    key: str
    count: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    samples: list[DeadLetter] = field(default_factory=list)


async def inspect_topic(settings: DlqSettings, dataset: str, by: str, samples: int) -> dict[str, Any]:
    """Count a dataset's dead letters (from the first offset to the end offsets as of now).

    Args:
        settings: broker and topic prefix.
        dataset: the dataset whose ``<prefix>.dlq.<dataset>`` topic is read.
        by: what to group by: ``reason``, ``kind``, ``source`` or a detail header such as ``rule``.
        samples: how many records to keep per group.

    Returns:
        A JSON-ready report: topic, total, and groups (largest first) with kinds, reasons, samples.

    Raises:
        DlqError: the DLQ topic does not exist.
    """
    namer = _namer(settings.topic_prefix)
    topic, ingested = namer.dlq(dataset), namer.ingested(dataset)
    groups: dict[str, Group] = {}
    total = 0
    # No group id: inspecting reads and never commits, so it cannot disturb a redrive's progress.
    async with _started(AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False, client_id="loopline-dlq")) as consumer:
        tps = await _partitions(consumer, topic)
        begin, end = await consumer.beginning_offsets(tps), await log_end(consumer, tps)
        for tp in tps:
            async for records in _read(consumer, tp, begin[tp], end[tp], 1000):
                for raw in records:
                    dl = _dead_letter(raw, ingested)
                    group = groups.setdefault(dl.group_key(by), Group(dl.group_key(by)))
                    group.count += 1
                    group.kinds[dl.kind] += 1
                    group.reasons[dl.reason] += 1
                    if len(group.samples) < samples:
                        group.samples.append(dl)
                    total += 1
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.key))
    return {"topic": topic, "dataset": dataset, "by": by, "total": total,
            "groups": [{"key": g.key, "count": g.count, "kinds": dict(g.kinds), "reasons": dict(g.reasons),
                        "samples": [s.summary() for s in g.samples]} for g in ordered]}


@dataclass
class RedriveReport:
    """What a redrive did (or, dry, would do)."""

    topic: str
    to: str
    filter: Filter
    dry_run: bool
    looked_at: int = 0
    unmatched: int = 0
    already_redriven: int = 0
    republished: list[DeadLetter] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)

    def take(self, dl: DeadLetter, covered: bool, redrivable_from: set[str]) -> bool:
        """Count ``dl`` under what happens to it; True when it is to be republished.

        Args:
            dl: the dead letter just read.
            covered: an earlier redrive already dealt with it.
            redrivable_from: source topics whose records can go back to ingest.
        """
        self.looked_at += 1
        if covered:
            self.already_redriven += 1
        elif not self.filter.matches(dl):
            self.unmatched += 1
        elif dl.problem or dl.source_topic not in redrivable_from:
            self.skipped.append((dl, dl.problem or f"failed on {dl.source_topic or '?'}, "
                                                   "not on the raw or ingested topic"))
        else:
            self.republished.append(dl)
            return True
        return False

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready view for ``--json``."""
        return {"topic": self.topic, "to": self.to, "dry_run": self.dry_run,
                "filter": {"reason": self.filter.reason, "kind": self.filter.kind}, "looked_at": self.looked_at,
                "unmatched": self.unmatched, "already_redriven": self.already_redriven,
                "republished": len(self.republished), "records": [d.summary() for d in self.republished],
                "skipped": [{**d.summary(), "why": why} for d, why in self.skipped]}


async def _committed(admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    # Partitions are named on purpose: the local broker fails an offset fetch for "all partitions".
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    return {tp: max(offsets[tp].offset, 0) if tp in offsets else 0 for tp in tps}


async def _ledgers(admin: AIOKafkaAdminClient, base: str,
                   tps: list[TopicPartition]) -> dict[Filter, dict[TopicPartition, int]]:
    """What earlier filtered redrives covered: filter -> per partition, the offset below which they did."""
    out: dict[Filter, dict[TopicPartition, int]] = {}
    for name, *_ in await admin.list_consumer_groups():
        if isinstance(name, str) and name.startswith(base + ".only."):
            flt = Filter.decode(name.removeprefix(base + ".only."))
            if flt is not None and not flt.everything:
                out[flt] = await _committed(admin, name, tps)
    return out


class _Committer:
    """Commits offsets for one consumer group without fetching anything (assigned, then paused)."""

    def __init__(self, bootstrap: str, group: str, tps: list[TopicPartition], start: dict[TopicPartition, int]) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                         client_id="loopline-dlq-redrive")
        self.tps, self.done = tps, dict(start)

    async def __aenter__(self) -> _Committer:
        await self.consumer.start()
        self.consumer.assign(self.tps)
        self.consumer.pause(*self.tps)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()

    async def advance(self, tp: TopicPartition, offset: int) -> None:
        # Never move back: an earlier run may have covered more than this chunk reached.
        if offset > self.done.get(tp, 0):
            await self.consumer.commit({tp: offset})
            self.done[tp] = offset


async def redrive_topic(settings: DlqSettings, dataset: str, flt: Filter, *, dry_run: bool,
                        chunk: int = 500) -> RedriveReport:
    """Republish a dataset's dead letters that match ``flt`` to its raw topic, once each.

    A dead letter is redriven as the producer's original bytes (an envelope's payload), with its
    key, its content type, ``x-loopline-event-id`` set to its event id when known (so ingest keeps
    the id) and ``x-loopline-redriven-from`` set to the source the failure happened at. Only dead
    letters that failed on the dataset's raw or ingested topic can go back to ingest; others that
    match are reported as skipped and count as dealt with. Progress semantics: see the module doc.

    Args:
        settings: broker and topic prefix.
        dataset: the dataset whose DLQ is redriven into ``<prefix>.raw.<dataset>``.
        flt: which dead letters to take; an empty filter takes all.
        dry_run: report what would be republished; publish and commit nothing.
        chunk: records per publish-then-commit step.

    Returns:
        What was (or would be) republished, skipped and left alone.

    Raises:
        DlqError: the DLQ or raw topic does not exist.
    """
    namer = _namer(settings.topic_prefix)
    topic, raw_topic, ingested = namer.dlq(dataset), namer.raw(dataset), namer.ingested(dataset)
    base = namer.group(f"dlq-redrive.{dataset}")
    report = RedriveReport(topic, raw_topic, flt, dry_run)
    bootstrap = settings.kafka_bootstrap
    async with contextlib.AsyncExitStack() as stack:
        reader = await stack.enter_async_context(_started(AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, client_id="loopline-dlq-redrive")))
        tps = await _partitions(reader, topic, raw_topic)
        admin = await stack.enter_async_context(_started(AIOKafkaAdminClient(bootstrap_servers=bootstrap)))
        main_done = await _committed(admin, base, tps)
        ledgers = await _ledgers(admin, base, tps)
        own_done = ledgers.get(flt, dict.fromkeys(tps, 0))
        begin, end = await reader.beginning_offsets(tps), await log_end(reader, tps)
        producer = main = own = None
        if not dry_run:
            producer = await stack.enter_async_context(_started(AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, client_id="loopline-dlq-redrive")))
            main = await stack.enter_async_context(_Committer(bootstrap, base, tps, main_done))
            if not flt.everything:
                own = await stack.enter_async_context(_Committer(bootstrap, f"{base}.only.{flt.encode()}", tps,
                                                                 own_done))
        for tp in tps:
            start = max(main_done[tp], begin[tp])
            frontier, clean = start, True  # everything below frontier is dealt with
            async for records in _read(reader, tp, start, end[tp], chunk):
                sends: list[Awaitable[Any]] = []
                for raw in records:
                    dl = _dead_letter(raw, ingested)
                    covered = any(f.matches(dl) and dl.offset < done[tp] for f, done in ledgers.items())
                    if report.take(dl, covered, {raw_topic, ingested}) and producer is not None:
                        sends.append(await producer.send(raw_topic, dl.payload, key=dl.key,
                                                         headers=redrive_headers(dl)))
                    clean = clean and (covered or flt.matches(dl))
                    frontier = dl.offset + 1 if clean else frontier
                # Commit only once the broker has every record of the chunk: a crash before this
                # point republishes the chunk (ingest drops repeats by event id) rather than losing it.
                await asyncio.gather(*sends)
                if own is not None:
                    await own.advance(tp, records[-1].offset + 1)
                if main is not None:
                    await main.advance(tp, frontier)
            if main is not None and clean:
                await main.advance(tp, end[tp])
    return report


class By(StrEnum):
    """What ``inspect`` groups by."""

    reason = "reason"
    kind = "kind"
    rule = "rule"
    contract = "contract"
    field = "field"
    source = "source"


@contextlib.contextmanager
def _quiet_client_logs() -> Iterator[None]:
    # aiokafka logs each failed connection attempt; with no logging configured, Python prints those
    # to stderr next to our one-line error. The outcome is reported by the command itself.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_log.setLevel(level)


def _run(work: Callable[[DlqSettings], Awaitable[T]], timeout_s: float) -> T:
    """Run ``work`` with the settings; what an operator must fix becomes one line on stderr and status 1."""
    async def bounded(settings: DlqSettings) -> T:
        async with asyncio.timeout(timeout_s):
            return await work(settings)

    bootstrap = "?"
    try:
        settings = _settings()
        bootstrap = settings.kafka_bootstrap
        with _quiet_client_logs():
            return asyncio.run(bounded(settings))
    except DlqError as exc:
        message = str(exc)
    except TimeoutError:
        message = f"no answer from the broker at {bootstrap} within {timeout_s:g}s"
    except (KafkaError, OSError) as exc:  # the broker is down, refuses us or drops the connection
        message = f"broker at {bootstrap} unreachable ({type(exc).__name__})"
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(1)


Timeout = Annotated[float, typer.Option(help="give up after this many seconds")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Dataset = Annotated[str, typer.Argument(help="dataset name, e.g. transactions")]


@dlq_app.command("inspect")
def inspect(dataset: Dataset,
            samples: Annotated[int, typer.Option(min=0, help="sample records shown per group")] = 3,
            by: Annotated[By, typer.Option(help="group by the reason, the kind, the source topic or a "
                                                "detail header (rule, contract, field)")] = By.reason,
            as_json: AsJson = False, timeout: Timeout = 60.0) -> None:
    """Count a dataset's dead letters by reason (or kind, rule, ...) and show a few of each."""
    result = _run(lambda s: inspect_topic(s, dataset, by.value, samples), timeout)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    out = Console()
    # Reasons and payloads are data, not rich markup: every cell is a Text so brackets print as is.
    table = Table("count", "kind", by.value, title=Text(f"{result['topic']}: {result['total']} dead letters"))
    for g in result["groups"]:
        kinds = ", ".join(f"{k} ({n})" if len(g["kinds"]) > 1 else k for k, n in g["kinds"].items())
        table.add_row(str(g["count"]), Text(kinds), Text(g["key"]))
    out.print(table)
    for g in result["groups"]:
        if g["samples"]:
            st = Table("source", "key", "event id", "value", title=Text(f"{g['key']} ({g['count']})"),
                       title_justify="left")
            for s in g["samples"]:
                st.add_row(*(Text(s[k] or "") for k in ("source", "key", "event_id", "value_preview")))
            out.print(st)


@dlq_app.command("redrive")
def redrive(dataset: Dataset,
            reason: Annotated[str | None, typer.Option(help="only dead letters whose reason contains this")] = None,
            kind: Annotated[str | None, typer.Option(help="only dead letters of this kind, e.g. exhausted")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be republished")] = False,
            chunk: Annotated[int, typer.Option(min=1, help="records published per committed step")] = 500,
            as_json: AsJson = False, timeout: Timeout = 300.0) -> None:
    """Republish dead letters to the dataset's raw topic, each once (progress kept in consumer groups).

    A filtered redrive leaves the dead letters it skips for a later redrive; see ``loopline_cli.dlq``.
    """
    flt = Filter(reason, kind)
    rep = _run(lambda s: redrive_topic(s, dataset, flt, dry_run=dry_run, chunk=chunk), timeout)
    if as_json:
        typer.echo(json.dumps(rep.as_json(), indent=2))
        return
    out = Console(highlight=False)
    verb = "would republish" if dry_run else "republished"
    out.print(Text(f"{rep.topic} -> {rep.to}: {verb} {len(rep.republished)} of {rep.looked_at} looked at "
                   f"(already redriven {rep.already_redriven}, not matching {rep.unmatched}, "
                   f"not redrivable {len(rep.skipped)})"), soft_wrap=True)
    if rep.republished:
        table = Table("source", "key", "event id", "reason")
        for dl in rep.republished[:20]:
            table.add_row(*(Text(v) for v in (dl.source, _text(dl.key) or "", dl.event_id or "", dl.reason)))
        if len(rep.republished) > 20:
            table.add_row("…", "", "", f"{len(rep.republished) - 20} more")
        out.print(table)
    for dl, why in rep.skipped[:20]:
        out.print(Text(f"skipped {dl.source or f'{rep.topic}/{dl.partition}/{dl.offset}'}: {why}"), soft_wrap=True)
