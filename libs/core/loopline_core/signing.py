"""Model artifact signing and verification in the OpenSSF Model Signing format (EC P-256 keys).

A signature is a Sigstore bundle over a manifest of per-file SHA-256 digests. Each signing key has
an id (a digest of its public key); verification trusts only keys in a :class:`TrustStore`.

Keys rotate without restarting anything:

* the private key directory holds ``<key_id>.key`` / ``<key_id>.pub`` and a ``current`` pointer, a
  small file naming the id the trainer signs with. :class:`SigningKey` given the pointer reads it at
  each signature, so moving the pointer changes the key of the next model, not of a running one.
* the trusted directory holds the public keys (``*.pub``, any names) whose signatures are accepted,
  and a ``revoked`` file, one key id per line (``#`` comments allowed). A revoked id is refused even
  while its ``.pub`` is still there. :meth:`TrustStore.from_dir` re-reads the directory when its
  listing or a file's mtime changed, so running services see a rotation or revocation at their next
  verification.

:func:`rotate` puts the new public key in the trusted directory *before* moving the pointer, so no
model is ever signed by a key its readers do not trust yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import model_signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loopline_core.errors import ErrorKind, LooplineError

log = logging.getLogger(__name__)

POINTER = "current"
REVOKED = "revoked"
KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_PEM = b"-----BEGIN"


def key_id(public_pem: bytes) -> str:
    """A stable short id for a public key: sha256 of its DER SubjectPublicKeyInfo, 16 hex chars."""
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _bundle_hint(public_pem: bytes) -> str:
    """The key hint model_signing writes into a bundle: sha256 of the key's PEM, as it re-encodes it."""
    key = serialization.load_pem_public_key(public_pem)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def refusal(kind: str, message: str, signer_key_id: str) -> LooplineError:
    """A ``FAILED_PRECONDITION`` saying why an artifact was refused: ``details["refusal"]`` is one of
    unsigned, unknown_key, revoked_key, tampered; ``details["signer_key_id"]`` the key it names."""
    return LooplineError(ErrorKind.FAILED_PRECONDITION, message, {"refusal": kind, "signer_key_id": signer_key_id})


# ---- signing keys --------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file and rename, so a reader sees the old content or the new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resolve(private_key_path: Path, public_key_path: Path | None) -> tuple[Path, Path]:
    """The (private, public) key files a path means right now: a ``current`` pointer (a file naming a
    key id in its directory, or a symlink to ``<id>.key``) is followed; a key file is itself.

    A symlink is followed first and its target judged by content: a Kubernetes Secret mounts every file
    as a symlink into a timestamped directory, so ``current`` there links to the pointer, not a key."""
    linked = private_key_path.is_symlink()
    path = private_key_path.resolve() if linked else private_key_path
    head = path.read_bytes()[:64]
    if head.lstrip().startswith(_PEM):
        return path, path.with_suffix(".pub") if linked else public_key_path or path.with_suffix(".pub")
    name = head.decode("ascii", "replace").strip().splitlines()[0].strip() if head.strip() else ""
    if not name or "/" in name:
        raise LooplineError(ErrorKind.FAILED_PRECONDITION, f"{private_key_path} names no signing key")
    return path.parent / f"{name}.key", path.parent / f"{name}.pub"


class SigningKey:
    """A private signing key, or a pointer to the current one (then read at each use).

    ``SigningKey(path)`` or ``SigningKey(path, path.with_suffix(".pub"))``: when ``path`` is a pointer
    the public path given is ignored, as ``current.pub`` means nothing.
    """

    def __init__(self, private_key_path: Path, public_key_path: Path | None = None) -> None:
        self.path = Path(private_key_path)
        self._public = Path(public_key_path) if public_key_path else None

    def files(self) -> tuple[Path, Path]:
        """The (private, public) key files in use now."""
        return _resolve(self.path, self._public)

    @property
    def private_key_path(self) -> Path:
        return self.files()[0]

    @property
    def public_key_path(self) -> Path:
        return self.files()[1]

    @property
    def key_id(self) -> str:
        return key_id(self.public_key_path.read_bytes())

    def __repr__(self) -> str:
        return f"SigningKey({str(self.path)!r})"


def _new_pair() -> tuple[bytes, bytes]:
    private = ec.generate_private_key(ec.SECP256R1())
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def generate_key(directory: Path, name: str = "signing") -> SigningKey:
    """Create an EC P-256 key pair as ``<name>.key`` / ``<name>.pub`` (PEM) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = _new_pair()
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    _write_atomic(priv_path, private_pem, 0o600)
    _write_atomic(pub_path, public_pem)
    return SigningKey(priv_path, pub_path)


def new_key(private_dir: Path) -> str:
    """Create a key pair named by its id (``<id>.key``/``<id>.pub``) in ``private_dir``; return the id.
    The pointer is not moved: see :func:`rotate`."""
    private_dir.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = _new_pair()
    kid = key_id(public_pem)
    _write_atomic(private_dir / f"{kid}.key", private_pem, 0o600)
    _write_atomic(private_dir / f"{kid}.pub", public_pem)
    return kid


def current_key_id(private_dir: Path) -> str | None:
    """The id of the key the pointer in ``private_dir`` names, or None without a pointer."""
    pointer = private_dir / POINTER
    if not pointer.exists():
        return None
    return key_id(SigningKey(pointer).public_key_path.read_bytes())


def set_current(private_dir: Path, kid: str) -> None:
    """Point ``current`` at key ``kid`` (atomically: a signer reads the old id or the new one)."""
    if not (private_dir / f"{kid}.key").is_file():
        raise LooplineError(ErrorKind.NOT_FOUND, f"no private key {kid}.key in {private_dir}")
    _write_atomic(private_dir / POINTER, f"{kid}\n".encode())


def trust(trusted_dir: Path, public_pem: bytes) -> str:
    """Add a public key to the trusted directory as ``<id>.pub``; return its id."""
    trusted_dir.mkdir(parents=True, exist_ok=True)
    kid = key_id(public_pem)
    _write_atomic(trusted_dir / f"{kid}.pub", public_pem)
    return kid


def rotate(private_dir: Path, trusted_dir: Path) -> str:
    """Make a new signing key, trust it, then make it current; return its id.

    The order matters: a reader must trust the new key before the first model signed with it
    exists. The old key stays trusted, so what it signed keeps verifying until it is revoked.
    """
    kid = new_key(private_dir)
    trust(trusted_dir, (private_dir / f"{kid}.pub").read_bytes())
    set_current(private_dir, kid)
    log.info("signing key rotated", extra={"key_id": kid})
    return kid


def init_keys(private_dir: Path, trusted_dir: Path) -> SigningKey:
    """A first signing key in an empty key layout (as the local stack makes); the pointer's key."""
    if not (private_dir / POINTER).exists():
        rotate(private_dir, trusted_dir)
    trusted_dir.mkdir(parents=True, exist_ok=True)
    return SigningKey(private_dir / POINTER)


def read_revoked(trusted_dir: Path) -> set[str]:
    """The key ids listed in ``trusted_dir/revoked`` (one a line; ``#`` starts a comment)."""
    path = trusted_dir / REVOKED
    if not path.is_file():
        return set()
    ids = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {i for i in ids if i}


def revoke(trusted_dir: Path, kid: str, reason: str = "") -> bool:
    """Append ``kid`` to ``trusted_dir/revoked``; False when it was already revoked."""
    if not KEY_ID.match(kid):
        raise LooplineError(ErrorKind.INVALID_ARGUMENT, f"{kid!r} is not a key id (16 hex characters)")
    if kid in read_revoked(trusted_dir):
        return False
    trusted_dir.mkdir(parents=True, exist_ok=True)
    path = trusted_dir / REVOKED
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    note = f"  # {reason}" if reason else ""
    _write_atomic(path, old + f"{kid}{note}\n".encode())
    log.warning("signing key revoked", extra={"key_id": kid})
    return True


def sign_dir(model_dir: Path, key: SigningKey, signature_path: Path) -> str:
    """Sign every file under ``model_dir``; write the bundle to ``signature_path``; return the key id."""
    if signature_path.resolve().is_relative_to(model_dir.resolve()):
        raise ValueError("the signature must live outside the signed directory")
    private, public = key.files()  # once: a rotation during signing cannot mix two keys
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(model_dir, signature_path)
    return key_id(public.read_bytes())


# ---- verification --------------------------------------------------------------------------------


def _bundle_key_hint(signature_path: Path) -> str:
    """The signer's key hint in a bundle ("" when it has none or is not a bundle)."""
    try:
        bundle = json.loads(signature_path.read_bytes())
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, KeyError, TypeError):
        return ""
    return hint if isinstance(hint, str) else ""


class TrustStore:
    """The public keys whose signatures this process accepts, by key id, minus revoked ids.

    Built from a directory, it re-reads it when it changed (checked at each verification: one
    listing and a stat per file), so a rotation or revocation reaches running services.
    """

    def __init__(self, public_keys: list[Path], revoked: Iterable[str] = ()) -> None:
        self._directory: Path | None = None
        self._stamp: tuple[tuple[str, int, int, int], ...] | None = None
        self._load(public_keys, set(revoked))

    @classmethod
    def from_dir(cls, directory: Path) -> TrustStore:
        store = cls([])
        store._directory = directory
        store.refresh()
        return store

    def _load(self, public_keys: list[Path], revoked: set[str]) -> None:
        keys: dict[str, Path] = {}
        hints: dict[str, str] = {}
        for p in public_keys:
            try:
                pem = p.read_bytes()
                kid = key_id(pem)
            except (OSError, ValueError) as exc:
                log.warning("skipping an unreadable public key", extra={"path": str(p), "error": str(exc)})
                continue
            keys[kid] = p
            hints[_bundle_hint(pem)] = kid
        self._keys, self._hints, self._revoked = keys, hints, revoked

    def _dir_stamp(self, directory: Path) -> tuple[tuple[str, int, int, int], ...]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return ()
        out = []
        for e in entries:
            if e.name.endswith(".pub") or e.name == REVOKED:
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                out.append((e.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def refresh(self) -> bool:
        """Re-read the directory if it changed since the last read; True when it did."""
        if self._directory is None:
            return False
        stamp = self._dir_stamp(self._directory)
        if stamp == self._stamp:
            return False
        d = self._directory
        first = self._stamp is None
        self._load(sorted(d.glob("*.pub")) if d.is_dir() else [], read_revoked(d) if d.is_dir() else set())
        self._stamp = stamp
        if not first:
            log.info("trusted keys reloaded", extra={"trusted": sorted(self._keys), "revoked": sorted(self._revoked)})
        return True

    @property
    def key_ids(self) -> list[str]:
        """Ids of the keys accepted now (revoked ones left out)."""
        self.refresh()
        return sorted(k for k in self._keys if k not in self._revoked)

    @property
    def revoked(self) -> set[str]:
        self.refresh()
        return set(self._revoked)

    def verify(self, model_dir: Path, signature_path: Path, signer_key_id: str) -> None:
        """Raise a refusal (``FAILED_PRECONDITION``, see :func:`refusal`) unless ``model_dir`` matches a
        bundle signed by a trusted, unrevoked key.

        ``signer_key_id`` is what the registry says signed it; the bundle's own key hint wins when it
        names a key this store knows, so a wrong claim cannot make a revoked key's signature pass.
        """
        self.refresh()
        if not signature_path.is_file():
            raise refusal("unsigned", f"unsigned artifact: no signature at {signature_path}", signer_key_id)
        hint = _bundle_key_hint(signature_path)
        signer = self._hints.get(hint, signer_key_id)
        if signer in self._revoked:
            raise refusal("revoked_key", f"signed by revoked key {signer!r}", signer)
        public = self._keys.get(signer)
        if public is None:
            raise refusal("unknown_key", f"signed by unknown key {signer!r}", signer)
        # A bundle whose key is unknown but that claims a trusted id fails below: a forged claim is
        # tampering (with the registry's record), and the mismatch says so.
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
                model_dir, signature_path)
        except Exception as exc:
            raise refusal("tampered", f"signature verification failed: {exc}", signer) from exc
