"""Unit tests of the kernel's pure parts (no servers needed)."""

from __future__ import annotations

import pytest
from loopline_core.db import Migration, migrate
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import TopicNamer
from loopline_core.settings import CoreSettings


def test_topic_names_follow_one_scheme() -> None:
    n = TopicNamer("loopline")
    assert n.raw("transactions") == "loopline.raw.transactions"
    assert n.dead_letter_for("loopline.ingested.transactions") == "loopline.dlq.transactions"
    assert n.dead_letter_for("loopline.models.events") == "loopline.models.events.dlq"
    assert n.group("ingest") == "loopline.ingest"
    assert len(set(n.platform_topics())) == len(n.platform_topics())


def test_error_kinds_split_permanent_from_transient() -> None:
    assert ErrorKind.INVALID_ARGUMENT.permanent
    assert not ErrorKind.UNAVAILABLE.permanent
    assert str(LooplineError(ErrorKind.NOT_FOUND, "no such model")) == "NOT_FOUND: no such model"


def test_settings_need_connections_and_mask_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("LOOPLINE_KAFKA_BOOTSTRAP", "LOOPLINE_POSTGRES_DSN", "LOOPLINE_S3_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="kafka_bootstrap"):
        CoreSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("LOOPLINE_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("LOOPLINE_POSTGRES_DSN", "postgresql://u:pw@h/db")
    monkeypatch.setenv("LOOPLINE_S3_ENDPOINT", "http://s3:9000")
    monkeypatch.setenv("LOOPLINE_S3_ACCESS_KEY", "a")
    monkeypatch.setenv("LOOPLINE_S3_SECRET_KEY", "very-secret")
    masked = CoreSettings().masked()  # type: ignore[call-arg]
    assert masked["kafka_bootstrap"] == "k:9092"
    assert masked["s3_secret_key"] == "***"
    assert "pw" not in str(masked)


async def test_migrations_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="ascending"):
        await migrate(None, "svc", [Migration(2, "b", ""), Migration(1, "a", "")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema name"):
        await migrate(None, "bad-name;drop", [])  # type: ignore[arg-type]
