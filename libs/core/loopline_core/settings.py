"""Connection settings every component reads, only from ``LOOPLINE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONTRACTS = Path(__file__).resolve().parents[3] / "contracts"
"""The repository's contracts, whatever the working directory of the process."""


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], service: str) -> S:
    """``cls()`` from the environment; a missing or malformed setting exits with one line naming the
    variable (``loopline-registry: LOOPLINE_KAFKA_BOOTSTRAP is required``), not a traceback."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = []
        for err in exc.errors():
            name = (prefix + "__".join(str(p) for p in err["loc"][:1])).upper()
            problems.append(f"{name} is required" if err["type"] == "missing" else f"{name}: {err['msg']}")
        raise SystemExit(f"loopline-{service}: " + "; ".join(problems)) from None


class AuthSettings(BaseSettings):
    """How gRPC servers and the OpenAI HTTP API authenticate callers, and what this process presents
    when it calls them (see docs/operations/auth.md). Secret values come only from files or
    ``LOOPLINE_AUTH_TOKEN``; they are ``SecretStr`` so the start-up log masks them."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", env_nested_delimiter="__", extra="ignore")

    auth_mode: Literal["token", "mtls", "none"] = "token"
    """``token``: a bearer token per client; ``mtls``: TLS with client certificates from ``auth_tls_ca``;
    ``none``: an explicit opt-out (anyone may call; only for a network nothing else can reach)."""
    auth_tokens_file: Path | None = None
    """Server side, mode ``token``: ``<client-id> <token>`` per line (or a JSON object client -> token);
    re-read when it changes. Required by a service that serves gRPC or HTTP in mode ``token``."""
    auth_token_file: Path | None = None
    """Client side: the file holding the bearer token this process sends to the platform's services."""
    auth_token: SecretStr | None = None
    """Client side: the token itself (a secret store's env injection); ``auth_token_file`` wins."""
    auth_tls_cert: Path | None = None
    """Mode ``mtls``: this process's certificate chain (PEM), as a server and as a client."""
    auth_tls_key: Path | None = None
    """Mode ``mtls``: its private key (PEM)."""
    auth_tls_ca: Path | None = None
    """Mode ``mtls``: the CA that issues the platform's certificates (PEM): clients' certificates must
    chain to it, and servers are checked against it."""
    auth_tls_server_name: str = ""
    """Mode ``mtls``, client side: the name a server's certificate must carry (empty: the address's host)."""


class CoreSettings(AuthSettings):
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
    bind_host: str = "0.0.0.0"  # noqa: S104 - a container's listeners must be reachable from outside it
    """Where every listener of the service binds (gRPC, HTTP, metrics). The local stack sets 127.0.0.1."""
    metrics_port: int = 9464
    """``/metrics``, ``/healthz`` and ``/readyz``; 0 picks a free one (logged at start)."""
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = ""
    """The OTLP/gRPC collector, e.g. ``http://otel-collector:4317`` (empty: the SDK's default)."""
    otel_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of new traces recorded; a record or call arriving with a trace keeps its caller's decision."""
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
