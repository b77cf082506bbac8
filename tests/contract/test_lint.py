"""The code style gate runs with the suite: ruff and mypy (strict) over libs and services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout[-4000:]


def test_mypy_strict() -> None:
    targets = ["libs/core", "libs/ml", "libs/llm", "libs/stack", "libs/cli", *sorted(str(p.relative_to(ROOT)) for p in
                                                                          ROOT.glob("services/*/src"))]
    res = subprocess.run([sys.executable, "-m", "mypy", *targets], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout[-4000:]
