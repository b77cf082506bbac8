"""Triton as a backend: inference forwards the ``triton`` variant to a real Triton 2.51 (PyTriton, in its
own virtualenv) that serves the version's signed ONNX export; its scores equal the in-process ones, and
when Triton goes away the request falls back to the champion's torch variant."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tga
from loopline.registry.v1 import registry_pb2 as rpb
from loopline_core import grpcx
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.signing import TrustStore
from loopline_inference.adapters.backends import load_variants
from loopline_ml.store import fetch_verified_dir
from loopline_stack import peers
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, register_signed_model, set_alias
from tritonclient.utils import InferenceServerException


async def _variant_scores(client: tga.InferenceServerClient, x: np.ndarray, variant: str) -> tuple[str, np.ndarray]:
    inp = tga.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = await client.infer("fraud", [inp], parameters={"variant": variant})
    return r.get_response().parameters["variant"].string_param, r.as_numpy("score").reshape(-1)


async def test_triton_backend_scores_equal_in_process_and_falls_back_when_triton_is_gone(
        isolated: dict[str, str], services: Callable[..., ServiceSet], tmp_path: Path) -> None:
    # the version and its exports exist first; Triton serves the verified export, then inference starts
    reg = services("registry")
    v1 = await register_signed_model(isolated, reg.addr("registry"), "fraud", seed=1, exports=True)
    export = next(e for e in v1.exports if e.format == "onnx")
    store = ObjectStore(isolated["LOOPLINE_S3_ENDPOINT"], isolated["LOOPLINE_S3_ACCESS_KEY"],
                        isolated["LOOPLINE_S3_SECRET_KEY"])
    trust = TrustStore.from_dir(Path(isolated["LOOPLINE_TRUSTED_KEYS_DIR"]))
    repo = await fetch_verified_dir(store, trust, export.uri, export.signature_uri, export.signer_key_id,
                                    Path(tempfile.mkdtemp(dir=tmp_path)))
    onnx = repo / export.triton_model_name / "1" / "model.onnx"
    x = np.random.default_rng(5).normal(size=(32, len(FEATURES))).astype(np.float32)
    expected = make_model(1).predict(x).reshape(-1)

    with peers.serve("triton", onnx, export.triton_model_name, len(FEATURES), tmp_path / "triton.log") as triton:
        # the loader forwards to Triton only when Triton answers as the version's verified export does:
        # v2's export has the same Triton model name, and this Triton serves v1's
        v2 = await register_signed_model(isolated, reg.addr("registry"), "fraud", seed=2, exports=True)
        with ThreadPoolExecutor(2) as pool:
            for version, seed, served in ((v1, 1, True), (v2, 2, False)):
                variants = await load_variants(version, make_model(seed), store, trust, pool, triton_url=triton)
                assert ("triton" in variants) is served, f"v{version.version}: Triton serves v1's export"
                for b in variants.values():
                    await b.close()
        svc = services("inference", env={"inference": {
            "LOOPLINE_REGISTRY_ADDR": reg.addr("registry"), "LOOPLINE_INFERENCE_TRITON_URL": triton}})
        rc = RegistryClient(reg.addr("registry"))
        await rc.apply_model(rpb.Model(name="fraud", variants=rpb.VariantPolicy(default_variant="triton")),
                             actor="test")
        await rc.close()
        await set_alias(reg.addr("registry"), "fraud", "champion", v1.version)
        client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
        async with asyncio.timeout(60):
            while True:
                try:
                    if await client.is_model_ready("fraud"):
                        break
                except InferenceServerException:
                    pass
                await asyncio.sleep(0.2)
        variant, scores = await _variant_scores(client, x, "")
        assert variant == "triton", "the policy's default variant is Triton"
        assert np.abs(scores - expected).max() < 1e-5, "Triton's scores equal the in-process torch ones"
        results = await asyncio.gather(*(_variant_scores(client, x[i:i + 1], "triton") for i in range(16)))
        assert all(v == "triton" and abs(s[0] - expected[i]) < 1e-5 for i, (v, s) in enumerate(results))

    # Triton has stopped: the same requests are answered by the champion's in-process variant
    variant, scores = await _variant_scores(client, x, "")
    assert variant == "torch", "Triton gone: the fallback answered"
    assert np.abs(scores - expected).max() < 1e-6
    assert await client.is_server_live(), "the server never dies on a request"
    await client.close()
