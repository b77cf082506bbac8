"""Where a model came from: code (git commit), dependencies (lock hash, library versions), artifact digest.

In an image there is no repository: the build passes the commit as the LOOPLINE_GIT_COMMIT /
LOOPLINE_GIT_DIRTY environment (from an image label). In a checkout git answers. Elsewhere "unknown",
said plainly rather than guessed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

UNKNOWN = "unknown"


@dataclass(frozen=True)
class CodeVersion:
    git_commit: str
    git_dirty: bool
    lock_hash: str
    python_version: str
    torch_version: str
    numpy_version: str


def project_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "requirements.lock").is_file():
            return parent
    return None


def _git(root: Path, *args: str) -> str | None:
    try:
        # "git" from PATH on purpose: where git lives differs between machines, and none is no error
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,  # noqa: S607
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path | None) -> tuple[str, bool]:
    commit = os.environ.get("LOOPLINE_GIT_COMMIT", "")
    if commit:
        return commit, os.environ.get("LOOPLINE_GIT_DIRTY", "").lower() in ("1", "true", "yes")
    if root is not None:
        head = _git(root, "rev-parse", "HEAD")
        if head:
            status = _git(root, "status", "--porcelain")
            return head.strip(), bool(status and status.strip())
    return UNKNOWN, False


def code_version() -> CodeVersion:
    root = project_root()
    commit, dirty = git_state(root)
    lock = root / "requirements.lock" if root else None
    lock_hash = hashlib.sha256(lock.read_bytes()).hexdigest() if lock and lock.is_file() else UNKNOWN
    return CodeVersion(commit, dirty, lock_hash, platform.python_version(), torch.__version__, np.__version__)


def dir_digest(directory: Path) -> str:
    """sha256 over every file's relative name and bytes, sorted by name: one value for an artifact."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix().encode()
        data = path.read_bytes()
        h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()
