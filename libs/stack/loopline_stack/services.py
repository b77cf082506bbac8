"""Run the eight services as separate processes against a running stack (demo and end-to-end tests)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopline_stack import procs

# Start order: the gRPC services others call first.
ORDER = ("registry", "feature", "ingest", "validator", "trainer", "inference", "monitor", "retrainer")
GRPC = {"registry": "loopline.registry.v1.RegistryService", "feature": "loopline.feature.v1.FeatureService",
        "inference": "inference.GRPCInferenceService"}
HTTP = "inference_http"
"""The key of inference's HTTP port in :attr:`ServiceSet.ports`."""


@dataclass
class Running:
    name: str
    pid: int
    create_time: float
    log: Path
    port: int | None = None


@dataclass
class ServiceSet:
    """The eight services, each its own OS process, wired only through LOOPLINE_* variables."""

    stack_env: dict[str, str]
    log_dir: Path
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def env_for(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
        env.update(self.stack_env)
        env.update({"LOOPLINE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
                    "LOOPLINE_REGISTRY_ADDR": f"127.0.0.1:{self.ports['registry']}",
                    "LOOPLINE_FEATURE_ADDR": f"127.0.0.1:{self.ports['feature']}",
                    f"LOOPLINE_{name.upper()}_PORT": str(self.ports.get(name, 0)),
                    **({"LOOPLINE_INFERENCE_HTTP_PORT": str(self.ports.get(HTTP, 0))} if name == "inference" else {}),
                    # Each service is one process; torch's thread pool would only fight the others for 2 cores.
                    "OMP_NUM_THREADS": "1"})
        # each service calls the others with a token of its own (the stack's auth/<service>.token)
        own = Path(self.stack_env.get("LOOPLINE_AUTH_TOKEN_FILE", "")).with_name(f"{name}.token")
        if "LOOPLINE_AUTH_TOKEN_FILE" in self.stack_env and own.is_file():
            env["LOOPLINE_AUTH_TOKEN_FILE"] = str(own)
        env.update(self.extra_env.get("*", {}))
        env.update(self.extra_env.get(name, {}))
        return env

    def start(self, progress: Callable[[str], None] = lambda _m: None, timeout_s: float = 90.0,
              names: tuple[str, ...] = ORDER) -> None:
        """Start ``names`` (all eight by default) in dependency order and wait until each is up."""
        self.ports = {name: procs.free_port() for name in [*GRPC, HTTP]}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in [n for n in ORDER if n in names]:
                log = self.log_dir / f"{name}.log"
                pid, ct = procs.spawn([sys.executable, "-m", f"loopline_{name}"], log, env=self.env_for(name))
                self.running[name] = Running(name, pid, ct, log, self.ports.get(name))
                if name in ("registry", "feature"):  # the others call these at start
                    self._wait_grpc(name, timeout_s)
                progress(f"started {name} (pid {pid})")
            if "inference" in names:  # up, not ready: it says SERVING only once a champion is loaded
                self._wait_grpc("inference", timeout_s, serving=False)
            self.wait_consumers(timeout_s)
        except BaseException:
            self.stop()
            raise

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def http_url(self) -> str:
        """Inference's OpenAI-compatible HTTP API (served when it serves an LLM)."""
        return f"http://127.0.0.1:{self.ports[HTTP]}"

    def _wait_grpc(self, name: str, timeout_s: float, *, serving: bool = True) -> None:
        """gRPC health (open to callers without a token, as a load balancer's probe is)."""
        r = self.running[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive(r)
            try:
                with self._probe_channel(name, f"127.0.0.1:{r.port}") as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=GRPC[name]),
                                                                timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING or not serving:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not become healthy within {timeout_s:.0f}s; see {r.log}")

    def _probe_channel(self, name: str, addr: str) -> grpc.Channel:
        """In mode mtls the port speaks only TLS with a client certificate: the service's own (its CA issued
        it); otherwise a plain channel without a token."""
        env = self.env_for(name)
        if env.get("LOOPLINE_AUTH_MODE") != "mtls":
            return grpc.insecure_channel(addr)
        creds = grpc.ssl_channel_credentials(Path(env["LOOPLINE_AUTH_TLS_CA"]).read_bytes(),
                                             Path(env["LOOPLINE_AUTH_TLS_KEY"]).read_bytes(),
                                             Path(env["LOOPLINE_AUTH_TLS_CERT"]).read_bytes())
        name_override = env.get("LOOPLINE_AUTH_TLS_SERVER_NAME")
        return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", name_override)]
                                   if name_override else None)

    def wait_consumers(self, timeout_s: float) -> None:
        """Every service logs ``consuming`` once its consumers started; wait for all of them."""
        deadline = time.monotonic() + timeout_s
        for r in self.running.values():
            while '"message": "consuming"' not in r.log.read_text(errors="replace"):
                self._check_alive(r)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{r.name} did not start within {timeout_s:.0f}s; see {r.log}")
                time.sleep(0.2)

    def _check_alive(self, r: Running) -> None:
        if procs.ours(r.pid, r.create_time) is None:
            tail = r.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{r.name} exited: {' | '.join(tail)}")

    def alive(self) -> dict[str, bool]:
        return {n: procs.ours(r.pid, r.create_time) is not None for n, r in self.running.items()}

    def stop(self) -> None:
        """SIGTERM every service (they drain and commit), then wait; SIGKILL what is left."""
        for r in self.running.values():
            proc = procs.ours(r.pid, r.create_time)
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        for r in reversed(list(self.running.values())):
            procs.stop(r.pid, r.create_time, timeout=15.0)
        self.running.clear()
