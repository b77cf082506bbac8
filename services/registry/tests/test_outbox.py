"""The registry's outbox across a broker outage: calls succeed, events follow, each exactly once, in order."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import asyncpg
from loopline.registry.v1 import registry_pb2 as pb
from loopline_core.kafka import TopicNamer
from loopline_core.registry import RegistryClient
from loopline_stack.services import ServiceSet
from loopline_testing.builders import read_fenced


def _version(run_id: str) -> pb.ModelVersion:
    return pb.ModelVersion(model_name="fraud", artifact_uri=f"s3://loopline-models/fraud/{run_id}/model",
                           signature_uri=f"s3://loopline-models/fraud/{run_id}/model.sig", signer_key_id="k1",
                           dataset_digest="d" * 64, run_id=run_id, gate=pb.Gate(passed=True))


class _KafkaGate:
    """A TCP proxy to the broker that a test can close and open again (an outage it controls).

    Like the S3 gate of ingest's archive test, plus one twist: the broker advertises its own port
    in metadata, so a client would go around the proxy after bootstrapping. Each broker frame has
    that port (an int32, the same length) replaced by the proxy's, so every connection stays on it.
    """

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self.conns: set[asyncio.StreamWriter] = set()

    async def _up(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _down(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        theirs, ours = struct.pack(">i", self.port), struct.pack(">i", self.listen_port)
        try:
            while True:
                size = await r.readexactly(4)
                frame = await r.readexactly(struct.unpack(">i", size)[0])
                w.write(size + frame.replace(theirs, ours))
                await w.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(self.host, self.port)
        self.conns |= {w, uw}
        await asyncio.gather(self._up(r, uw), self._down(ur, w))

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.conns:
            w.close()
        self.conns.clear()
        await self.server.wait_closed()


async def _pending(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("select count(*) from registry.outbox where published_at is null"))
    finally:
        await conn.close()


async def test_changes_made_while_the_broker_is_away_are_published_once_in_order(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    gate = _KafkaGate(isolated["LOOPLINE_KAFKA_BOOTSTRAP"])
    await gate.open()
    env = {"LOOPLINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{gate.listen_port}", "LOOPLINE_OUTBOX_FLUSH_S": "0.5"}
    # started from a thread: the proxy runs on this loop, and the registry connects through it as it starts
    svc = await asyncio.to_thread(services, "registry", env={"registry": env})
    addr = svc.addr("registry")
    dsn = isolated["LOOPLINE_POSTGRES_DSN"]
    rc = RegistryClient(addr, timeout_s=30)
    try:
        await rc.register(_version("r1"))
        assert await _pending(dsn) == 0, "with the broker there, a call answers after its event is out"
        await gate.close()
        # the broker is away: every call still succeeds (after its flush wait); the events wait in the outbox
        await rc.register(_version("r2"))
        await rc.register(_version("r3"))
        await rc.set_alias("fraud", "champion", 2, actor="a", reason="first")
        await rc.set_alias("fraud", "champion", 3, actor="a", reason="second", expected=2)
        assert await _pending(dsn) == 7
        await gate.open()  # the same port: the registry's bootstrap is unchanged
        async with asyncio.timeout(90):
            while await _pending(dsn):
                await asyncio.sleep(0.2)
    finally:
        await rc.close()

    conn = await asyncpg.connect(dsn)
    try:
        ids = [r["event_id"] for r in await conn.fetch("select event_id from registry.outbox order by seq")]
    finally:
        await conn.close()
    records = await read_fenced(isolated["LOOPLINE_KAFKA_BOOTSTRAP"],
                                TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"]).model_events())
    events = [pb.ModelChanged.FromString(r.value) for r in records]
    assert [e.metadata.event_id for e in events] == ids, "each event exactly once, in commit order"
    assert [(e.kind, e.version) for e in events] == [
        (pb.MODEL_EVENT_KIND_REGISTERED, 1), (pb.MODEL_EVENT_KIND_REGISTERED, 2), (pb.MODEL_EVENT_KIND_REGISTERED, 3),
        (pb.MODEL_EVENT_KIND_ALIAS_SET, 2), (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 2),
        (pb.MODEL_EVENT_KIND_ALIAS_SET, 3), (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 3),
        (pb.MODEL_EVENT_KIND_STAGE_CHANGED, 2)]
