"""Sign, upload and register an LLM directory as a model version (flavor ``llm``), then point an alias at it."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

from loopline.registry.v1 import registry_pb2
from loopline_core.objstore import ObjectStore
from loopline_core.registry import RegistryClient
from loopline_core.signing import SigningKey
from loopline_ml.store import upload_signed

# A tiny model's training loss above this did not learn its corpus: the gate refuses it as champion.
MAX_FINAL_LOSS = 1.0


async def register_llm(objects: ObjectStore, key: SigningKey, registry_addr: str, model_name: str, model_dir: Path,
                       *, alias: str = "champion", actor: str = "loopline llm") -> registry_pb2.ModelVersion:
    """Register ``model_dir`` (a Hugging Face causal-LM directory) as the next version of ``model_name``.

    The directory is copied before signing (the signature bundle is written beside it), so a cached build
    is never touched. Its gate checks the training loss recorded in ``training.json``.
    """
    run_id = str(uuid.uuid4())
    training = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").is_file() else {}
    loss = float(training.get("final_loss", float("nan")))
    passed = loss <= MAX_FINAL_LOSS
    with tempfile.TemporaryDirectory(prefix="loopline-llm-") as tmp:
        work = Path(tmp) / "model"
        shutil.copytree(model_dir, work)
        artifact_uri, signature_uri, key_id = await upload_signed(objects, key, work, f"{model_name}/{run_id}")
    version = registry_pb2.ModelVersion(
        model_name=model_name, artifact_uri=artifact_uri, signature_uri=signature_uri, signer_key_id=key_id,
        dataset_digest=str(training.get("corpus_digest", "")), run_id=run_id, flavor="llm",
        metrics={"final_loss": loss, "parameters": float(training.get("parameters", 0))},
        params={k: str(v) for k, v in training.get("config", {}).items()},
        gate=registry_pb2.Gate(passed=passed, summary=f"training loss {loss:.4f} (limit {MAX_FINAL_LOSS})",
                               checks=[registry_pb2.GateCheck(metric="final_loss", kind="absolute",
                                                              threshold=MAX_FINAL_LOSS, value=loss, passed=passed)]))
    registry = RegistryClient(registry_addr)
    try:
        await registry.apply_model(registry_pb2.Model(name=model_name, description="a causal language model",
                                                      intended_use="text generation"), actor=actor)
        stored = await registry.register(version)
        if alias:
            await registry.set_alias(model_name, alias, stored.version, actor=actor, reason="registered")
            stored = await registry.get(model_name, stored.version)
    finally:
        await registry.close()
    result: registry_pb2.ModelVersion = stored
    return result
