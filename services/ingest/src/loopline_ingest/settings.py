from loopline_core.settings import CoreSettings
from pydantic import Field


class Settings(CoreSettings):
    """Ingest settings (``LOOPLINE_*``): the datasets it serves are ``LOOPLINE_DATASETS``, and each
    dataset's contract (``LOOPLINE_CONTRACTS_DIR``) names its entity key, event time and event id."""

    # The raw archive (a second subscription, group ``<prefix>.ingest-archive``, on the ingested topics).
    archive_enabled: bool = True
    archive_prefix: str = ""
    """Key prefix inside ``loopline-raw`` (``loopline replay`` reads the same variable); default: none."""
    archive_max_records: int = 20_000
    """Most records in one archive batch (one Parquet file per dataset and event-time hour of a batch)."""
    archive_min_bytes: int = 4 * 1024 * 1024
    """The broker holds an archive fetch until this many bytes are there or ``archive_linger_ms`` passed,
    so a slow stream still makes files of a useful size."""
    archive_linger_ms: int = Field(10_000, ge=10, le=14_000)
    """Longest wait for ``archive_min_bytes``: the archive is at most about this far behind ingest. Below
    the bus's 15 s request timeout, which a held fetch must not reach."""
