"""Start servers as our own children and stop them by pid (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def spawn(args: Sequence[str], log_path: Path, *, user: str | None = None,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, float]:
    """Start ``args`` detached in its own session, output to ``log_path``; return (pid, create time).

    The create time lets :func:`stop` tell our process from an unrelated one that reused the pid.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, user=user, env=env, cwd=cwd)
    return proc.pid, psutil.Process(proc.pid).create_time()


def ours(pid: int, create_time: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one we started, else None."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return proc


def stop(pid: int, create_time: float, *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal our process, wait up to ``timeout``, then SIGKILL it and its children that remain."""
    proc = ours(pid, create_time)
    if proc is None:
        return
    try:
        children = proc.children(recursive=True)
        proc.send_signal(sig)
        _, alive = psutil.wait_procs([proc], timeout=timeout)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=5)
        # children of the server (postgres backends, say) that outlived it
        _, left = psutil.wait_procs(children, timeout=2)
        for p in left:
            p.kill()
    except psutil.NoSuchProcess:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(check: object, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check()`` until it returns truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return True
        except Exception:  # noqa: BLE001, S110 - not ready yet looks like many kinds of error
            pass
        time.sleep(interval)
    return False
