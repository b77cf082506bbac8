"""Real peer servers for tests and benchmarks: run with a peer venv's python, never imported.

    <triton venv>/bin/python serve.py triton MODEL.onnx NAME N_FEATURES GRPC_PORT HTTP_PORT METRICS_PORT
    <kserve venv>/bin/python serve.py kserve MODEL.onnx NAME N_FEATURES GRPC_PORT HTTP_PORT

Triton is Triton Inference Server 2.51 as PyTriton 0.7 bundles it, with dynamic batching on.

Both serve the same exported ONNX model through onnxruntime (one intra-op thread per call, as
Loopline's variant does) under the Open Inference Protocol's tensor names, so one client drives all.
Each prints ``ready`` when it serves and stops on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Any

import numpy as np
import onnxruntime as ort

MAX_BATCH = 64  # rows, as Loopline's default LOOPLINE_INFERENCE_MAX_BATCH
QUEUE_DELAY_US = 2000  # as Loopline's default LOOPLINE_INFERENCE_MAX_QUEUE_DELAY_MS


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def stop_on_sigterm() -> None:
    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def triton(path: str, name: str, n: int, grpc_port: int, http_port: int, metrics_port: int) -> None:
    # imported here: each peer's venv holds only its own server
    from pytriton.decorators import batch  # noqa: PLC0415
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: PLC0415
    from pytriton.triton import Triton, TritonConfig  # noqa: PLC0415

    s = session(path)

    @batch  # type: ignore[untyped-decorator]
    def infer(features: np.ndarray) -> dict[str, np.ndarray]:
        return {"score": s.run(["score"], {"features": features.astype(np.float32)})[0]}

    stop_on_sigterm()
    config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    with Triton(config=config) as server:
        server.bind(model_name=name, infer_func=infer,
                    inputs=[Tensor(name="features", dtype=np.float32, shape=(n,))],
                    outputs=[Tensor(name="score", dtype=np.float32, shape=(1,))],
                    config=ModelConfig(max_batch_size=MAX_BATCH,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US)),
                    strict=False)
        server.run()
        print("ready", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


def kserve(path: str, name: str, n: int, grpc_port: int, http_port: int) -> None:
    import kserve as ks  # noqa: PLC0415
    from kserve import InferOutput, InferRequest, InferResponse  # noqa: PLC0415

    s = session(path)

    class OnnxModel(ks.Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.ready = True

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            x = payload.inputs[0].as_numpy().astype(np.float32).reshape(-1, n)
            out = s.run(["score"], {"features": x})[0]
            output = InferOutput(name="score", shape=list(out.shape), datatype="FP32")
            output.set_data_from_numpy(out)
            return InferResponse(model_name=name, infer_outputs=[output], response_id=payload.id)

    stop_on_sigterm()
    server = ks.ModelServer(grpc_port=grpc_port, http_port=http_port, workers=1, enable_docs_url=False,
                            enable_latency_logging=False)
    # no log line per request (KServe's defaults write two), as Triton and Loopline by default; set after
    # ModelServer() has applied KServe's logging configuration
    logging.getLogger("kserve").setLevel(logging.WARNING)
    print("ready", flush=True)  # the client polls readiness itself; this only says the process got here
    server.start([OnnxModel()])


def main(argv: list[str]) -> None:
    kind, path, name, n, *ports = argv
    args: list[Any] = [path, name, int(n), *(int(p) for p in ports)]
    if kind == "triton":
        triton(*args)
    elif kind == "kserve":
        kserve(*args)
    else:
        sys.exit(f"unknown peer {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
