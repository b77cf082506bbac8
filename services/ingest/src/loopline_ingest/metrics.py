from prometheus_client import Counter

INGESTED = Counter("loopline_ingest_events_total", "Events enveloped and forwarded", ["dataset"])
DUPLICATES = Counter("loopline_ingest_duplicates_total", "Events dropped as already seen", ["dataset"])
ARCHIVE_RECORDS = Counter("loopline_ingest_archived_records_total", "Events written to the raw archive", ["dataset"])
ARCHIVE_FILES = Counter("loopline_ingest_archive_files_total", "Parquet files written to the raw archive", ["dataset"])
ARCHIVE_BYTES = Counter("loopline_ingest_archive_bytes_total", "Parquet bytes written to the raw archive", ["dataset"])
ARCHIVE_SKIPPED = Counter("loopline_ingest_archive_skipped_total", "Ingested records not archived", ["reason"])
