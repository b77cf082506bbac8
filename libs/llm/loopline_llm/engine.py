"""vLLM as a managed child process: its OpenAI-compatible server, from the vLLM virtualenv.

Why a child process and not the async engine in process: vLLM pins numpy 2.3 (the project pins 2.4), brings
its own torch threads and RAM reservation, and can fail to start or crash on a bad artifact; in its own
process none of that reaches the inference service, which keeps serving its other models, reports the LLM
not ready, and stops the engine by its own pid. The cost is one loopback HTTP hop per request (measured by
``python -m bench llm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from loopline_core.errors import ErrorKind, LooplineError


@dataclass(frozen=True)
class EngineConfig:
    """vLLM's settings for one model (pinned defaults; LOOPLINE_INFERENCE_LLM_ENGINE overrides per model)."""

    dtype: str = "float32"
    max_model_len: int = 512
    max_num_seqs: int = 256
    """Sequences in one continuous batch."""
    kv_cache_share: float = 0.1
    """``--gpu-memory-utilization``: on CPU the share of RAM reserved for the KV cache (0.92 refuses here)."""
    prefix_caching: bool = True
    enforce_eager: bool = True
    seed: int = 0
    threads: int = 0
    """torch threads of the engine (0: vLLM's choice)."""
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def args(self) -> list[str]:
        out = ["--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--max-num-seqs",
               str(self.max_num_seqs), "--gpu-memory-utilization", str(self.kv_cache_share), "--seed", str(self.seed),
               "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching"]
        if self.enforce_eager:
            out.append("--enforce-eager")
        return [*out, *self.extra_args]


def engine_python() -> Path:
    """The interpreter that has vLLM: ``LOOPLINE_VLLM_PYTHON`` (an image's), else the cached venv (built once)."""
    configured = os.environ.get("LOOPLINE_VLLM_PYTHON", "")
    if configured:
        return Path(configured)
    from loopline_stack.peers import venv  # noqa: PLC0415 (the local stack's builder; images set the variable)

    built: Path = venv("vllm")
    return built / "bin" / "python"


class VllmServer:
    """One vLLM OpenAI server serving ``model_dir`` as ``served_name`` on a loopback port."""

    def __init__(self, model_dir: Path, served_name: str, config: EngineConfig, log: Path, *,
                 python: Path | None = None, port: int = 0) -> None:
        self.model_dir = model_dir
        self.served_name = served_name
        self.config = config
        self.log = log
        self.python = python
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self, timeout_s: float = 300.0) -> None:
        """Start the server and wait until it answers /health; raises UNAVAILABLE with the log's tail."""
        from loopline_stack.procs import free_port  # noqa: PLC0415

        python = self.python or await asyncio.to_thread(engine_python)
        self.port = self.port or free_port()
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        if self.config.threads:
            env["OMP_NUM_THREADS"] = str(self.config.threads)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        args = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-uvicorn-access-log", *self.config.args()]
        with self.log.open("ab") as out:
            self._proc = await asyncio.to_thread(
                subprocess.Popen, args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise LooplineError(ErrorKind.UNAVAILABLE, f"the vLLM engine exited ({self._proc.returncode}): "
                                        f"{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        return
                await asyncio.sleep(0.5)
        await self.stop()
        raise LooplineError(ErrorKind.UNAVAILABLE, f"the vLLM engine did not start in {timeout_s:.0f}s: "
                            f"{self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    async def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's own process group (its engine core is a child), then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 5)
