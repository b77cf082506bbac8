"""Connection settings every component reads, only from ``LOOPLINE_*`` environment variables."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for the start-up log line."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            out[key] = "***" if isinstance(value, SecretStr) else value
        return out
