"""Who may call the platform's servers, and what a client presents (see docs/operations/auth.md).

Modes (``LOOPLINE_AUTH_MODE``): ``token`` (default) checks ``authorization: Bearer <token>`` against a
tokens file of ``<client-id> <token>`` lines; ``mtls`` requires a client certificate issued by the
configured CA and names the client by the certificate's common name; ``none`` is an explicit opt-out.

A refused call gets one answer whatever was wrong (no header, a malformed one, an unknown token):
nothing in it tells an attacker which. Tokens are compared with :func:`hmac.compare_digest`, held as
:class:`~pydantic.SecretStr` outside the comparison, and never logged or put in an error.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from loopline_core.settings import AuthSettings

REFUSED = "missing or invalid credentials"
"""The one message every refused call gets (gRPC UNAUTHENTICATED, HTTP 401)."""
ANONYMOUS = "anonymous"
"""The client id of every caller in mode ``none``."""
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Probes and load balancers have no token: health checks and reflection stay open."""


def parse_tokens(text: str) -> dict[str, str]:
    """``client -> token`` from a tokens file (the last line of a client that has several)."""
    return dict(parse_pairs(text))


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``(client, token)`` pairs from a tokens file: a JSON object, or ``<client-id> <token>`` lines
    (``#`` comments); a client may have several lines (its old and new token while rotating)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        raw = json.loads(stripped)
        if not isinstance(raw, dict):
            raise ValueError("the tokens file's JSON is not an object of client -> token")
        return [(str(k), str(v)) for k, v in raw.items() if str(v)]
    out: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        parts = body.split()
        if len(parts) != 2:
            raise ValueError(f"line {n} of the tokens file is not '<client-id> <token>'")
        out.append((parts[0], parts[1]))
    return out


class TokenTable:
    """The tokens file, re-read when its modification time or size changes (rotation without a restart;
    looked at no more than once a second). A file that turns unreadable or malformed keeps the last good table."""

    def __init__(self, path: Path, recheck_s: float = 1.0) -> None:
        self.path = path
        self._recheck_s = recheck_s
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._tokens: list[tuple[str, bytes]] = []
        self._load(first=True)

    def _load(self, *, first: bool = False) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return
            tokens = parse_pairs(self.path.read_text())
        except (OSError, ValueError) as exc:
            if first:
                raise ValueError(f"{self.path}: {exc.__class__.__name__}") from None
            return
        if not tokens and first:
            raise ValueError(f"{self.path} holds no token")
        self._tokens = [(client, token.encode()) for client, token in tokens]
        self._stamp = stamp

    def identify(self, token: str) -> str | None:
        """The client holding ``token``, or None. Every entry is compared (constant time each)."""
        now = time.monotonic()
        if now - self._checked >= self._recheck_s:
            self._checked = now
            self._load()
        presented = token.encode()
        found = None
        for client, known in self._tokens:
            if hmac.compare_digest(presented, known) and found is None:
                found = client
        return found

    def __len__(self) -> int:
        return len(self._tokens)


def bearer(value: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None when it is not one."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


@dataclass
class ServerAuth:
    """The server side: checks a caller and names it (the rate limiter's key)."""

    mode: str
    tokens: TokenTable | None = None
    tls_cert: bytes = b""
    tls_key: bytes = b""
    tls_ca: bytes = b""

    @classmethod
    def from_settings(cls, s: AuthSettings, service: str = "service") -> ServerAuth:
        """From settings; a mode without what it needs stops the service with one line naming the variable."""
        if s.auth_mode == "none":
            return cls("none")
        if s.auth_mode == "mtls":
            missing = [n for n, v in (("CERT", s.auth_tls_cert), ("KEY", s.auth_tls_key), ("CA", s.auth_tls_ca))
                       if v is None]
            if missing:
                raise SystemExit(f"loopline-{service}: LOOPLINE_AUTH_TLS_{missing[0]} is required "
                                 "(LOOPLINE_AUTH_MODE=mtls)")
            try:
                return cls("mtls", tls_cert=Path(str(s.auth_tls_cert)).read_bytes(),
                           tls_key=Path(str(s.auth_tls_key)).read_bytes(), tls_ca=Path(str(s.auth_tls_ca)).read_bytes())
            except OSError as exc:
                raise SystemExit(f"loopline-{service}: LOOPLINE_AUTH_TLS_*: cannot read {exc.filename}") from None
        if s.auth_tokens_file is None:
            raise SystemExit(f"loopline-{service}: LOOPLINE_AUTH_TOKENS_FILE is required (LOOPLINE_AUTH_MODE=token; "
                             "LOOPLINE_AUTH_MODE=none opts out)")
        try:
            return cls("token", tokens=TokenTable(s.auth_tokens_file))
        except ValueError as exc:
            raise SystemExit(f"loopline-{service}: LOOPLINE_AUTH_TOKENS_FILE: {exc}") from None

    def identify_token(self, authorization: str | bytes | None) -> str | None:
        """Mode ``token``: the client an ``Authorization`` value names, or None (refuse)."""
        if self.mode == "none":
            return ANONYMOUS
        if self.tokens is None:  # mtls: the transport checked the certificate
            return None
        token = bearer(authorization)
        return None if token is None else self.tokens.identify(token)

    def identify_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """The client named by a call's metadata (``authorization``), or None."""
        value = next((v for k, v in (metadata or ()) if k.lower() == "authorization"), None)
        return self.identify_token(value)

    def client_id(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Inside a handler (the call already passed the interceptor): who is calling."""
        if self.mode == "mtls":
            names = context.auth_context().get("x509_common_name") or []
            return names[0].decode() if names else "unknown"
        return self.identify_metadata(context.invocation_metadata()) or "unknown"

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials requiring a client certificate from the CA (mode ``mtls``), else None."""
        if self.mode != "mtls":
            return None
        return grpc.ssl_server_credentials([(self.tls_key, self.tls_cert)], root_certificates=self.tls_ca,
                                           require_client_auth=True)


@dataclass
class ClientCredentials:
    """What a client presents: a bearer token, or (mtls) a certificate and the CA it trusts."""

    token: SecretStr | None = None
    tls_cert: bytes = b""
    tls_key: bytes = b""
    tls_ca: bytes = b""
    server_name: str = ""

    @classmethod
    def from_settings(cls, s: AuthSettings) -> ClientCredentials:
        token = s.auth_token
        if s.auth_token_file is not None:
            token = SecretStr(Path(s.auth_token_file).read_text().strip())
        if s.auth_mode == "mtls" and s.auth_tls_cert and s.auth_tls_key and s.auth_tls_ca:
            return cls(token, Path(s.auth_tls_cert).read_bytes(), Path(s.auth_tls_key).read_bytes(),
                       Path(s.auth_tls_ca).read_bytes(), s.auth_tls_server_name)
        return cls(token)

    @classmethod
    def from_env(cls) -> ClientCredentials:
        """From ``LOOPLINE_AUTH_*`` in the environment (what every service, the CLI and the tests set)."""
        return cls.from_settings(AuthSettings(_env_file=None))  # type: ignore[call-arg]

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata to add to every call."""
        if self.token is None:
            return ()
        return (("authorization", f"Bearer {self.token.get_secret_value()}"),)

    def headers(self) -> dict[str, str]:
        """The HTTP headers (the same bearer token)."""
        return dict(self.metadata())

    def api_key(self) -> str:
        """For the ``openai`` client, which sends its ``api_key`` as ``Authorization: Bearer``."""
        return self.token.get_secret_value() if self.token is not None else "none"


def client_env(env: Mapping[str, str]) -> dict[str, str]:
    """The ``LOOPLINE_AUTH_*`` variables of ``env`` (a stack's) that make a process a client with its credentials."""
    return {k: v for k, v in env.items() if k.startswith("LOOPLINE_AUTH_") and k != "LOOPLINE_AUTH_TOKENS_FILE"}


def write_private(path: Path, text: str) -> None:
    """Create ``path`` 0600 (never readable by others in between) with ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def write_tokens(path: Path, tokens: dict[str, str]) -> None:
    """Write a tokens file readable by its owner only."""
    write_private(path, "".join(f"{client} {token}\n" for client, token in tokens.items()))


CLIENTS = ("ingest", "validator", "feature", "trainer", "registry", "inference", "monitor", "retrainer", "operator")
"""Who gets a token: each service (as a client of the others) and the operator (CLI, demo, tests)."""


def ensure_tokens(auth_dir: Path, clients: tuple[str, ...] = CLIENTS) -> list[str]:
    """A token in ``auth_dir/tokens`` (what servers check) and ``auth_dir/<client>.token`` (what the client
    sends) for every client that has none yet; the clients given one. Existing lines are kept as they are
    (a client may hold several during a rotation; its ``.token`` file is its last)."""
    auth_dir.mkdir(parents=True, exist_ok=True)
    auth_dir.chmod(0o700)
    table = auth_dir / "tokens"
    text = table.read_text() if table.is_file() else ""
    known: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2:
            known[parts[0]] = parts[1]
    new = [c for c in clients if c not in known]
    if new:
        made = {c: secrets.token_urlsafe(32) for c in new}
        prefix = text if not text or text.endswith("\n") else text + "\n"
        write_private(table, prefix + "".join(f"{client} {token}\n" for client, token in made.items()))
        known.update(made)
    for client, token in known.items():
        mine = auth_dir / f"{client}.token"
        if client in new or not mine.is_file():
            write_private(mine, token + "\n")
    return new
