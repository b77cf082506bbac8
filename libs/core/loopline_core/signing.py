"""Model artifact signing and verification in the OpenSSF Model Signing format (EC P-256 keys).

A signature is a Sigstore bundle over a manifest of per-file SHA-256 digests. Each signing key has
an id (a digest of its public key); verification trusts only keys in a :class:`TrustStore`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import model_signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loopline_core.errors import ErrorKind, LooplineError

log = logging.getLogger(__name__)


def key_id(public_pem: bytes) -> str:
    """A stable short id for a public key: sha256 of its DER SubjectPublicKeyInfo, 16 hex chars."""
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private_key_path: Path
    public_key_path: Path

    @property
    def key_id(self) -> str:
        return key_id(self.public_key_path.read_bytes())


def generate_key(directory: Path, name: str = "signing") -> SigningKey:
    """Create an EC P-256 key pair as ``<name>.key`` / ``<name>.pub`` (PEM) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    priv_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    priv_path.chmod(0o600)
    pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return SigningKey(priv_path, pub_path)


def sign_dir(model_dir: Path, key: SigningKey, signature_path: Path) -> str:
    """Sign every file under ``model_dir``; write the bundle to ``signature_path``; return the key id."""
    if signature_path.resolve().is_relative_to(model_dir.resolve()):
        raise ValueError("the signature must live outside the signed directory")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key.private_key_path).sign(
        model_dir, signature_path)
    return key.key_id


class TrustStore:
    """The public keys whose signatures this process accepts, by key id."""

    def __init__(self, public_keys: list[Path]) -> None:
        self._keys = {key_id(p.read_bytes()): p for p in public_keys}

    @classmethod
    def from_dir(cls, directory: Path) -> TrustStore:
        return cls(sorted(directory.glob("*.pub")) if directory.is_dir() else [])

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, model_dir: Path, signature_path: Path, signer_key_id: str) -> None:
        """Raise ``FAILED_PRECONDITION`` unless ``model_dir`` matches a bundle signed by a trusted key."""
        if not signature_path.is_file():
            raise LooplineError(ErrorKind.FAILED_PRECONDITION, f"unsigned artifact: no signature at {signature_path}")
        public = self._keys.get(signer_key_id)
        if public is None:
            raise LooplineError(ErrorKind.FAILED_PRECONDITION, f"signed by unknown key {signer_key_id!r}")
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
                model_dir, signature_path)
        except Exception as exc:
            raise LooplineError(ErrorKind.FAILED_PRECONDITION, f"signature verification failed: {exc}") from exc
