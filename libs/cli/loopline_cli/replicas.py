"""``loopline run <service> --replicas N``: N processes of one service sharing its consumer group.

Every replica is the same service started as its own OS process with the same ``LOOPLINE_*``
variables, so all of them join the service's consumer group and the broker spreads the group's
partitions over them (the partition count is the ceiling: a replica beyond it holds none and idles).
What differs per replica:

- ``LOOPLINE_METRICS_PORT``: the base port plus the replica's index (9464, 9465, ...), or 0 for each
  when the base is 0 (each picks a free port and logs it in its ``starting`` line);
- ``LOOPLINE_REPLICA``: its index, which every JSON log line of the replica carries as ``replica``.

The parent is a supervisor, not a restarter: SIGTERM or SIGINT is forwarded to every replica as
SIGTERM (each drains its batches in hand, commits and leaves the group), the parent waits for all of
them and exits 0 when all exited 0. A second signal, or a replica still running ``stop_timeout_s``
after the first, is SIGKILLed. A replica that exits on its own is not restarted: the parent stops the
others the same way and exits 1, naming it. Restarts belong to the one supervisor above this
command (Kubernetes, Compose's restart policy, systemd); a second, hidden layer of restarts would
turn a crash loop into a quiet one, and the group already hands a dead replica's partitions to the
survivors, with its uncommitted records redelivered.

If the parent dies without forwarding anything (SIGKILL), the kernel sends each replica SIGTERM
(``PR_SET_PDEATHSIG``, Linux): a replica never outlives its ``loopline run``.

The monitor and the retrainer are refused more than one replica anywhere (see
:data:`SINGLE_INSTANCE`). Services that serve gRPC (registry, feature, inference) are refused more
than one replica here: their clients dial one fixed address (``LOOPLINE_<SERVICE>_ADDR``), so
replicas on ``port+i`` would take no calls without a load balancer in front; scale them where a
Service or proxy spreads calls (``docker compose --scale``, a Kubernetes Deployment; see
docs/operations/scaling.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType

import psutil
from loopline_stack import procs

GRPC_SERVICES = ("registry", "feature", "inference")
"""Services that serve gRPC on a fixed port: one replica per host (see the module docstring)."""
SINGLE_INSTANCE = {
    "monitor": "its drift windows and alert state live in one process's memory (one active monitor per model): "
               "replicas would each see part of a version's traffic",
    "retrainer": "its schedule triggers, cool-downs and rollout decisions would fire once per replica",
}
"""Services that must run as one process anywhere (Kubernetes runs them with one replica, Recreate)."""
DEFAULT_METRICS_PORT = 9464
"""``CoreSettings.metrics_port``'s default: the base when ``LOOPLINE_METRICS_PORT`` is unset."""
REPLICA_ENV = "LOOPLINE_REPLICA"
PORT_ENV = "LOOPLINE_METRICS_PORT"
MAX_PORT = 65535
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


class ReplicaError(ValueError):
    """``--replicas`` cannot be honoured as asked (the message says why, in one line)."""


def check(service: str, replicas: int) -> None:
    """Refuse a replica count that cannot work for ``service``."""
    if replicas < 1:
        raise ReplicaError(f"--replicas must be at least 1, not {replicas}")
    if replicas > 1 and service in SINGLE_INSTANCE:
        raise ReplicaError(f"{service} runs as one process: {SINGLE_INSTANCE[service]}")
    if replicas > 1 and service in GRPC_SERVICES:
        raise ReplicaError(
            f"{service} serves gRPC on one fixed port (LOOPLINE_{service.upper()}_PORT) that its clients dial "
            f"through LOOPLINE_{service.upper()}_ADDR, so more replicas on this host would take no calls; run one "
            f"here, or scale it behind a load balancer (docker compose up -d --scale {service}=N, kubectl scale "
            f"deployment/{service} --replicas=N; see docs/operations/scaling.md)")


def metrics_ports(base: int, replicas: int) -> list[int]:
    """Each replica's metrics port: ``base + i``, or 0 for every one when ``base`` is 0 (a free port each)."""
    if base == 0:
        return [0] * replicas
    if base < 0 or base + replicas - 1 > MAX_PORT:
        raise ReplicaError(f"{PORT_ENV}={base} leaves no room for {replicas} replicas "
                           f"(ports {base}..{base + replicas - 1}; at most {MAX_PORT})")
    return [base + i for i in range(replicas)]


def base_metrics_port(env: Mapping[str, str]) -> int:
    raw = env.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_METRICS_PORT
    try:
        return int(raw)
    except ValueError:
        raise ReplicaError(f"{PORT_ENV}: not a port number: {raw!r}") from None


def plan(service: str, replicas: int, env: Mapping[str, str]) -> list[dict[str, str]]:
    """The environment of each replica: ``env`` plus its index and its metrics port; a
    :class:`ReplicaError` when ``replicas`` cannot work for ``service`` or its ports do not fit."""
    check(service, replicas)
    ports = metrics_ports(base_metrics_port(env), replicas)
    return [{**env, REPLICA_ENV: str(i), PORT_ENV: str(port)} for i, port in enumerate(ports)]


@dataclass
class Replica:
    index: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    create_time: float
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Supervisor:
    """Starts ``replicas`` processes of ``service`` and sees them to their end (see the module docstring)."""

    service: str
    envs: list[dict[str, str]]
    """One environment per replica, from :func:`plan`."""
    stop_timeout_s: float = 60.0
    say: Callable[[str], None] = print
    running: list[Replica] = field(default_factory=list)
    _stopping_since: float | None = None
    _signals: int = 0
    _failed: list[str] = field(default_factory=list)

    def run(self) -> int:
        """Run until every replica exited; 0 when all of them drained on request, else 1."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for i, env in enumerate(self.envs):
                if self._stopping_since is not None:  # a signal came while we were starting
                    break
                self.running.append(self._start(i, env))
            self.say(f"{self.service}: {len(self.running)} replicas: " + ", ".join(
                f"{r.index} (pid {r.pid}, metrics {r.metrics_port or 'free port, logged'})" for r in self.running))
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for r in self.running:  # only if supervising itself failed: nothing of ours outlives us
                procs.stop(r.pid, r.create_time, timeout=self.stop_timeout_s)
        return 1 if self._failed else 0

    def _start(self, index: int, env: dict[str, str]) -> Replica:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopline_cli.replicas", self.service, str(os.getpid())], env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True)  # a terminal's Ctrl-C reaches the parent only; it forwards one SIGTERM
        return Replica(index, int(env[PORT_ENV]), proc, psutil.Process(proc.pid).create_time())

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            self.say(f"{self.service}: {signal.Signals(signum).name}: draining {len(self.running)} replicas "
                     f"(again to kill them)")
            self._stop_all(signal.SIGTERM)
        else:
            self.say(f"{self.service}: killing the replicas still running")
            self._stop_all(signal.SIGKILL)

    def _stop_all(self, sig: int) -> None:
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
        for r in self.running:
            proc = procs.ours(r.pid, r.create_time)
            if proc is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(sig)

    def _supervise(self) -> None:
        while self.running:
            for r in list(self.running):
                rc = r.proc.poll()
                if rc is None:
                    continue
                self.running.remove(r)
                r.returncode = rc
                if self._stopping_since is None:
                    self._failed.append(f"replica {r.index} (pid {r.pid}) exited on its own with {rc}")
                    self.say(f"{self.service}: replica {r.index} (pid {r.pid}) exited on its own with status {rc}; "
                             f"stopping the others (restarts are the supervisor's above this command)")
                    self._stop_all(signal.SIGTERM)
                elif rc != 0:
                    self._failed.append(f"replica {r.index} (pid {r.pid}) exited with {rc} while stopping")
                    self.say(f"{self.service}: replica {r.index} (pid {r.pid}) exited with status {rc}")
            if (self._stopping_since is not None and self.running
                    and time.monotonic() - self._stopping_since > self.stop_timeout_s):
                self.say(f"{self.service}: {len(self.running)} replicas still running after "
                         f"{self.stop_timeout_s:.0f}s; killing them")
                self._failed.append("killed after the stop timeout")
                self._stop_all(signal.SIGKILL)
                self._stopping_since = time.monotonic()  # wait for the kills the same way
            time.sleep(0.1)
        if not self._failed:
            self.say(f"{self.service}: every replica drained and stopped")


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM (it drains) when ``parent`` dies without forwarding one,
    SIGKILLed say: nothing of a ``loopline run`` outlives it. Linux only; elsewhere nothing is done."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above took effect
        raise SystemExit(f"loopline-replica: the parent {parent} is gone")


def child_main(service: str, parent: int) -> None:
    """One replica: the service's own ``run()``, its log lines tagged with ``replica``."""
    import importlib  # noqa: PLC0415

    _die_with(parent)
    replica = int(os.environ.get(REPLICA_ENV, "0"))
    make = logging.getLogRecordFactory()

    def tagged(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.replica = replica  # the JSON formatter writes every extra attribute of a record
        return record

    logging.setLogRecordFactory(tagged)
    importlib.import_module(f"loopline_{service}.main").run()


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]))
