"""on_ingested: ``loopline.ingested.<dataset>`` -> Parquet files in ``loopline-raw`` (the raw archive)."""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError
from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.archive import ArchivedRecord
from loopline_core.kafka import Item, Record
from loopline_core.kafka.records import REPLAY

from loopline_ingest.adapters.archive import ArchiveWriter
from loopline_ingest.metrics import ARCHIVE_BYTES, ARCHIVE_FILES, ARCHIVE_RECORDS, ARCHIVE_SKIPPED

log = logging.getLogger(__name__)


class ArchiveHandler:
    def __init__(self, writer: ArchiveWriter) -> None:
        self.writer = writer

    def decode(self, record: Record) -> ArchivedRecord | None:
        """The archive row of one ingested envelope; None for a record not to archive.

        A replayed record (``x-loopline-replay``) is already in the archive. An envelope that does
        not parse is skipped with a log line, not dead-lettered: the validator reads the same topic
        and dead-letters it, and one bad record should make one dead letter.
        """
        if record.header(REPLAY) is not None:
            ARCHIVE_SKIPPED.labels("replay").inc()
            return None
        msg = EventIngested()
        try:
            msg.ParseFromString(record.value)
        except DecodeError:
            ARCHIVE_SKIPPED.labels("not_an_envelope").inc()
            log.warning("not an EventIngested envelope: not archived", extra={"source": record.source})
            return None
        return ArchivedRecord(
            msg.metadata.event_id, msg.dataset, msg.source,
            msg.event_time.seconds * 1_000_000 + msg.event_time.nanos // 1000,
            msg.ingest_time.seconds * 1_000_000 + msg.ingest_time.nanos // 1000,
            msg.content_type, record.key, msg.payload, record.topic, record.partition, record.offset)

    async def on_ingested(self, items: list[Item[ArchivedRecord | None]]) -> None:
        """Consumes ``loopline.ingested.<dataset>`` (its own group, large batches); writes one Parquet
        file and manifest per dataset and event-time hour of the batch to ``loopline-raw``.

        Returns once every file and manifest is stored, so the batch commits only after its records
        are archived (at least once: a crash before the commit rewrites the same files).
        """
        rows = [item.value for item in items if item.value is not None]
        if not rows:
            return
        files = await self.writer.write(rows)
        ARCHIVE_RECORDS.labels(rows[0].dataset).inc(len(rows))
        ARCHIVE_FILES.labels(rows[0].dataset).inc(len(files))
        ARCHIVE_BYTES.labels(rows[0].dataset).inc(sum(len(f.data) for f in files))
        log.info("archived", extra={"records": len(rows), "files": [f.key for f in files],
                                    "bytes": sum(len(f.data) for f in files)})
