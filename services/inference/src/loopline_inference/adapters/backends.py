"""Backends: what computes a version's scores. Every backend answers off the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as tga
from loopline.registry.v1 import registry_pb2
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.objstore import ObjectStore
from loopline_core.signing import TrustStore
from loopline_ml.artifact import ScoringModel
from loopline_ml.exports import INPUT, OUTPUT
from loopline_ml.store import fetch_verified_dir
from tritonclient.utils import InferenceServerException

from loopline_inference.metrics import VARIANT_LOADS

log = logging.getLogger(__name__)


class Backend(Protocol):
    """One variant of one version: ``predict`` takes a (n, n_features) float32 batch and returns (n,)
    float32 scores without blocking the event loop; ``close`` frees what it holds."""

    variant: str
    n_features: int

    async def predict(self, x: np.ndarray) -> np.ndarray: ...

    async def close(self) -> None: ...


class TorchBackend:
    """The signed torch artifact, in process; batches run on ``executor`` (torch releases the GIL)."""

    variant = "torch"

    def __init__(self, model: ScoringModel, executor: Executor) -> None:
        self.model = model
        self.n_features = model.n_features
        self._executor = executor

    async def predict(self, x: np.ndarray) -> np.ndarray:
        scores = await asyncio.get_running_loop().run_in_executor(self._executor, self.model.predict, x)
        return np.asarray(scores, dtype="<f4").reshape(-1)

    async def close(self) -> None:
        return None


class OnnxBackend:
    """An exported ONNX model (fp32 or INT8) under onnxruntime, in process; runs on ``executor``."""

    def __init__(self, variant: str, path: Path, n_features: int, executor: Executor, threads: int = 1) -> None:
        self.variant = variant
        self.n_features = n_features
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._executor = executor

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self._session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype="<f4").reshape(-1)

    async def predict(self, x: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, x)

    async def close(self) -> None:
        return None


class TritonBackend:
    """The version's exported model as a real Triton serves it (from the exported model repository),
    called over ``tritonclient.grpc.aio``; a failure is UNAVAILABLE, and the caller falls back to torch."""

    variant = "triton"

    def __init__(self, url: str, model_name: str, n_features: int, timeout_s: float = 5.0) -> None:
        self.url = url
        self.model_name = model_name
        self.n_features = n_features
        self._timeout_s = timeout_s
        self._client = tga.InferenceServerClient(url)

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name))
        except InferenceServerException:
            return False

    async def predict(self, x: np.ndarray) -> np.ndarray:
        inp = tga.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        try:
            result = await self._client.infer(self.model_name, [inp], outputs=[tga.InferRequestedOutput(OUTPUT)],
                                              client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"triton at {self.url}: {exc.message()}") from exc
        return np.asarray(result.as_numpy(OUTPUT), dtype="<f4").reshape(-1)

    async def close(self) -> None:
        await self._client.close()


TRITON_PARITY = 1e-5
"""Largest difference, on the probe rows, between Triton's scores and the verified export's."""


async def load_variants(v: registry_pb2.ModelVersion, model: ScoringModel, objects: ObjectStore, trust: TrustStore,
                        executor: Executor, *, onnx_threads: int = 1, triton_url: str = "") -> dict[str, Backend]:
    """The torch variant, every signed ONNX export of ``v`` that verifies, and, when a Triton serves the
    exported repository (``triton_url``) and answers as the verified ONNX export does, the ``triton``
    variant. An export that is refused or fails to load is skipped (logged and counted): the torch
    variant still serves the version."""
    out: dict[str, Backend] = {"torch": TorchBackend(model, executor)}
    for e in v.exports:
        if e.format not in ("onnx", "onnx-int8"):
            continue
        try:
            directory = await fetch_verified_dir(objects, trust, e.uri, e.signature_uri, e.signer_key_id)
            path = directory / e.triton_model_name / "1" / "model.onnx"
            out[e.format] = await asyncio.to_thread(OnnxBackend, e.format, path, model.n_features, executor,
                                                    onnx_threads)
        except Exception as exc:  # a bad export must never stop its version from serving
            VARIANT_LOADS.labels(v.model_name, e.format, "refused").inc()
            log.exception("export not loaded: the torch variant serves this version",
                      extra={"model": v.model_name, "version": v.version, "variant": e.format, "error": str(exc)})
            continue
        VARIANT_LOADS.labels(v.model_name, e.format, "loaded").inc()
    fp32 = next((e for e in v.exports if e.format == "onnx"), None)
    if triton_url and fp32 is not None:
        triton = TritonBackend(triton_url, fp32.triton_model_name, model.n_features)
        outcome = await _triton_outcome(triton, out.get("onnx"))
        VARIANT_LOADS.labels(v.model_name, "triton", outcome).inc()
        if outcome == "loaded":
            out["triton"] = triton
        else:
            await triton.close()
            log.warning("the triton variant is not used for this version; the other variants serve",
                        extra={"model": v.model_name, "version": v.version, "triton": triton_url,
                               "triton_model": fp32.triton_model_name, "outcome": outcome})
    return out


async def _triton_outcome(triton: TritonBackend, verified: Backend | None) -> str:
    """Triton serves whatever its repository holds under the export's model name, which is the same for
    every version of a model (and nothing there is checked against the signature). So its variant is
    used only when it scores probe rows as this version's verified ONNX export does: a Triton still
    serving another version, or a model nobody signed, is never forwarded to."""
    if verified is None:
        return "unverified"  # the signed export was refused or is absent: nothing to compare Triton with
    if not await triton.ready():
        return "not_ready"
    probe = np.random.default_rng(0).normal(size=(16, triton.n_features)).astype(np.float32)
    try:
        theirs = await triton.predict(probe)
    except LooplineError:
        return "not_ready"
    ours = await verified.predict(probe)
    if theirs.shape != ours.shape or not np.abs(theirs - ours).max() <= TRITON_PARITY:
        return "mismatch"
    return "loaded"
