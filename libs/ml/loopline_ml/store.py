"""Signed artifacts in the object store: upload once, download and verify before use."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.objstore import ObjectStore
from loopline_core.signing import SigningKey, TrustStore, sign_dir

from loopline_ml.artifact import ScoringModel, load

MODELS = "loopline-models"


def split_uri(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    return u.netloc, u.path.lstrip("/")


async def upload_signed(objects: ObjectStore, key: SigningKey, model_dir: Path, prefix: str) -> tuple[str, str, str]:
    """Sign ``model_dir``; upload it and the bundle under ``prefix``; return (artifact, signature, key id)."""
    sig = model_dir.parent / "model.sig"
    key_id = sign_dir(model_dir, key, sig)
    await objects.put_dir(MODELS, f"{prefix}/model", model_dir)
    await objects.put_bytes(MODELS, f"{prefix}/model.sig", sig.read_bytes(), metadata={"signer-key-id": key_id})
    return f"s3://{MODELS}/{prefix}/model", f"s3://{MODELS}/{prefix}/model.sig", key_id


async def fetch_verified_dir(objects: ObjectStore, trust: TrustStore, artifact_uri: str, signature_uri: str,
                             key_id: str, into: Path | None = None) -> Path:
    """Download a signed directory and its signature and verify it (hashing runs in a thread, off the
    event loop); return the verified directory.

    A refusal is a ``FAILED_PRECONDITION`` whose ``details["refusal"]`` says why (unsigned,
    unknown_key, revoked_key, tampered) and ``details["signer_key_id"]`` which key; a version with no
    signature URI, or whose signature object is gone, is unsigned.
    """
    work = into or Path(tempfile.mkdtemp(prefix="loopline-artifact-"))
    bucket, prefix = split_uri(artifact_uri)
    await objects.get_dir(bucket, prefix, work / "model")
    sig = work / "model.sig"
    sig.unlink(missing_ok=True)
    if signature_uri:
        sbucket, skey = split_uri(signature_uri)
        try:
            sig.write_bytes(await objects.get_bytes(sbucket, skey))
        except LooplineError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND:
                raise
    await asyncio.to_thread(trust.verify, work / "model", sig, key_id)
    return work / "model"


async def fetch_verified(objects: ObjectStore, trust: TrustStore, artifact_uri: str, signature_uri: str,
                         key_id: str, into: Path | None = None) -> ScoringModel:
    """Download an artifact and its signature, verify against ``trust``, then load it (in a thread:
    a reload never stalls the event loop that serves requests). Refusals as :func:`fetch_verified_dir`."""
    directory = await fetch_verified_dir(objects, trust, artifact_uri, signature_uri, key_id, into)
    return await asyncio.to_thread(load, directory)
