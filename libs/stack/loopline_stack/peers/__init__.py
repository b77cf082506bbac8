"""Real serving peers in virtualenvs of their own: Triton 2.51 (PyTriton 0.7 needs numpy<2) and KServe's
ModelServer (its own pins). Each venv is built once per machine and cached by the hash of its pinned
requirements under ``.cache/peer-<name>-<hash>``; each server runs as a process group of its own on
free loopback ports and is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from loopline_stack.procs import free_port

HERE = Path(__file__).resolve().parent
CACHE = HERE.parents[3] / ".cache"
PEERS = ("triton", "kserve", "vllm")
# Packages pip pulls in that must go again (see the requirements file of the peer).
_ONE_BY_ONE = {"vllm"}
_REMOVE = {"vllm": ("torchvision", "torchaudio", "torchcodec")}


def venv(name: str, progress: Callable[[str], None] = lambda _m: None) -> Path:
    """The peer's virtualenv, built on first use from ``peers/<name>.txt``."""
    requirements = HERE / f"{name}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    path = CACHE / f"peer-{name}-{digest}"
    if (path / ".complete").is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"peer-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run or helper may be building it right now
        if not (path / ".complete").is_file():
            _build(name, requirements, path, progress)
    return path


def _build(name: str, requirements: Path, path: Path, progress: Callable[[str], None]) -> None:
    python = shutil.which("python3.11") or sys.executable
    if path.exists():
        shutil.rmtree(path)  # a build that did not finish
    progress(f"building the {name} venv in {path} (once per machine)")
    started = time.monotonic()
    subprocess.run([python, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    specs = [line.split("#")[0].strip() for line in requirements.read_text().splitlines()]
    # vLLM: one install per line, in order (torch's CPU build must be in place before vLLM resolves);
    # the others resolve as one set
    steps = [[s] for s in specs if s] if name in _ONE_BY_ONE else [["-r", str(requirements)]]
    for spec in steps:
        result = subprocess.run([*pip, "install", "--quiet", *spec], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"pip could not build the {name} venv ({spec}):\n{tail}")
    if _REMOVE.get(name):
        subprocess.run([*pip, "uninstall", "--quiet", "-y", *_REMOVE[name]], capture_output=True, check=False)
    (path / ".complete").write_text(f"built in {time.monotonic() - started:.0f}s\n")


def _ready(addr: str, model: str, deadline: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    with grpc.insecure_channel(addr) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
                raise RuntimeError(f"the peer exited ({proc.returncode}): {tail}")
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=2).ready:
                    return
            time.sleep(0.3)
    raise RuntimeError(f"the peer did not serve {model!r} in time; see {log}")


@contextlib.contextmanager
def serve(kind: str, onnx: Path, model: str, n_features: int, log: Path, *, timeout_s: float = 180.0,
          progress: Callable[[str], None] = lambda _m: None) -> Iterator[str]:
    """Serve ``onnx`` as ``model`` on a real ``kind`` server; yields its gRPC address (host:port)."""
    python = venv(kind, progress) / "bin" / "python"
    ports = [free_port() for _ in range(3 if kind == "triton" else 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kind == "triton":  # the Python backend's stub must find the interpreter's shared library
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(python), str(HERE / "serve.py"), kind, str(onnx), model,
                                 str(n_features), *map(str, ports)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        addr = f"127.0.0.1:{ports[0]}"
        _ready(addr, model, time.monotonic() + timeout_s, proc, log)
        yield addr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own group: tritonserver, its child, stops with it
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
