"""Connection settings every component reads, only from ``LOOPLINE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONTRACTS = Path(__file__).resolve().parents[3] / "contracts"
"""The repository's contracts, whatever the working directory of the process."""


class CoreSettings(BaseSettings):
    """Settings shared by every service. Services subclass this and add their own fields.

    Connections have no defaults on purpose: a service that is not pointed at a broker, a
    database and an object store fails at start-up, not on its first message.
    """

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", env_nested_delimiter="__", extra="forbid")

    kafka_bootstrap: str
    postgres_dsn: SecretStr
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: SecretStr
    s3_secure: bool = False
    s3_region: str = "us-east-1"

    log_level: str = "INFO"
    log_format: Literal["json", "text", "auto"] = "auto"
    metrics_port: int = 0
    """Prometheus endpoint port; 0 picks a free one (logged at start)."""
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = ""
    topic_prefix: str = "loopline"
    """Every topic name starts with this; tests use a unique one per test."""
    datasets: list[str] = ["transactions"]
    """The datasets ingest and the validator serve; each needs a contract under ``contracts_dir``."""
    contracts_dir: Path = _CONTRACTS
    """Where ``<dataset>/v<major>.json`` data contracts live (default: the repository's ``contracts/``)."""

    kafka_max_records: int = 500
    """Most records a hot-path subscriber takes in one batch."""
    kafka_linger_ms: int = 10
    """How long a subscriber waits to fill a batch when fewer records are ready (latency vs. batch size)."""
    retry_initial_backoff_s: float = 0.2
    retry_max_backoff_s: float = 5.0
    retry_budget_s: float = 60.0
    """A record failing transiently for longer than this goes to the dead-letter topic as ``exhausted``."""
    retry_max_attempts: int = 20
    retry_handler_timeout_s: float = 240.0
    """A handler call running longer is cancelled and retried as a transient failure."""
    retry_not_ready_after: int = 3
    """Consecutive transient failures after which ``/readyz`` answers 503."""

    outbox_poll_s: float = 1.0
    """An outbox relay wakes on each commit (LISTEN/NOTIFY); this poll only bounds the delay when a
    notification is missed."""
    outbox_flush_s: float = 5.0
    """After writing an event to its outbox, how long a handler waits for the relay to publish it
    (the event is committed either way; this keeps "offset committed" meaning "event published"
    normally)."""

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for the start-up log line."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            out[key] = "***" if isinstance(value, SecretStr) else value
        return out
