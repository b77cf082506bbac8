from prometheus_client import Counter

INGESTED = Counter("loopline_ingest_events_total", "Events enveloped and forwarded", ["dataset"])
DUPLICATES = Counter("loopline_ingest_duplicates_total", "Events dropped as already seen", ["dataset"])
