"""Fixtures that bring the real local stack up once per test session (no mocks of its servers)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from loopline_core.kafka import Publisher, TopicNamer, ensure_topics
from loopline_core.objstore import ObjectStore
from loopline_stack import Stack, StackState
from loopline_stack.services import ORDER, ServiceSet
from loopline_stack.stack import StackConfig

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def stack() -> Iterator[StackState]:
    """Start Tansu, PostgreSQL and SeaweedFS for this session; export their LOOPLINE_* variables."""
    state_dir = ROOT / ".loopline" / f"test-stack-{os.getpid()}"
    st = Stack(StackConfig(state_dir=state_dir, timeout_s=90))
    state = st.up()
    saved = {k: os.environ.get(k) for k in state.env}
    os.environ.update(state.env)
    try:
        yield state
    finally:
        st.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def durable_stack() -> Iterator[Stack]:
    """A durable stack of the test's own (the broker keeps its log in the stack's S3 store, so it can
    be stopped and started). Not under tmp_path: as root PostgreSQL runs as another user, and a
    pytest session starting meanwhile would chmod /tmp/pytest-of-root back to 0700 mid-initdb."""
    state_dir = Path(tempfile.mkdtemp(prefix="loopline-durable-"))
    st = Stack(StackConfig(state_dir=state_dir, durable=True, timeout_s=90))
    try:
        st.up()
        yield st
    finally:
        st.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def bootstrap(stack: StackState) -> str:
    return stack.env["LOOPLINE_KAFKA_BOOTSTRAP"]


@pytest.fixture
def pg_dsn(stack: StackState) -> str:
    return stack.env["LOOPLINE_POSTGRES_DSN"]


@pytest.fixture
def store(stack: StackState) -> ObjectStore:
    return ObjectStore(stack.env["LOOPLINE_S3_ENDPOINT"], stack.env["LOOPLINE_S3_ACCESS_KEY"],
                       stack.env["LOOPLINE_S3_SECRET_KEY"])


@pytest.fixture
async def namer(bootstrap: str) -> TopicNamer:
    """A topic namer with a prefix unique to this test, its platform topics created."""
    n = TopicNamer(prefix=f"t{uuid.uuid4().hex[:10]}")
    await ensure_topics(bootstrap, n.platform_topics(), partitions=3)
    return n


@pytest.fixture
async def publisher(bootstrap: str) -> AsyncIterator[Publisher]:
    pub = Publisher(bootstrap, client_id="test")
    await pub.start()
    yield pub
    await pub.stop()


_SPANS = None


def pytest_configure(config: pytest.Config) -> None:
    """Record spans in memory for the whole session, so tests can follow a trace across Kafka."""
    global _SPANS  # noqa: PLW0603 - the tracer provider is process-global by OpenTelemetry's design
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

    _SPANS = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(provider)


@pytest.fixture
def spans():  # type: ignore[no-untyped-def]
    """The in-memory span exporter, cleared for this test."""
    assert _SPANS is not None
    _SPANS.clear()
    return _SPANS


async def isolate(stack_env: dict[str, str]) -> dict[str, str]:
    """Stack variables with a database and a topic prefix of their own (topics created): for a test, or
    for a module-scoped set of services (an LLM engine is too slow to start per test)."""
    import asyncpg  # noqa: PLC0415

    suffix = uuid.uuid4().hex[:10]
    dsn = stack_env["LOOPLINE_POSTGRES_DSN"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"create database t_{suffix}")
    finally:
        await conn.close()
    prefix = f"t{suffix}"
    await ensure_topics(stack_env["LOOPLINE_KAFKA_BOOTSTRAP"], TopicNamer(prefix).platform_topics())
    return {**stack_env, "LOOPLINE_POSTGRES_DSN": dsn.rsplit("/", 1)[0] + f"/t_{suffix}",
            "LOOPLINE_TOPIC_PREFIX": prefix}


@pytest.fixture
async def isolated(stack: StackState) -> dict[str, str]:
    """Stack variables for one test: a database and a topic prefix of its own (topics created)."""
    return await isolate(stack.env)


@pytest.fixture
def services(isolated: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., ServiceSet]]:
    """Start some of the eight services, as separate processes, against this test's isolated stack."""
    started: list[ServiceSet] = []

    def start(*names: str, env: dict[str, dict[str, str]] | None = None) -> ServiceSet:
        svc = ServiceSet(isolated, tmp_path / "logs", env or {})
        svc.start(names=names or ORDER)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()
