"""A service started without a required setting stops at once with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# registry: only the kernel's connections; trainer and inference: settings of their own besides
CASES = {
    "registry": ["LOOPLINE_KAFKA_BOOTSTRAP", "LOOPLINE_POSTGRES_DSN", "LOOPLINE_S3_ENDPOINT"],
    "trainer": ["LOOPLINE_SIGNING_KEY", "LOOPLINE_REGISTRY_ADDR", "LOOPLINE_FEATURE_ADDR"],
    "inference": ["LOOPLINE_TRUSTED_KEYS_DIR", "LOOPLINE_REGISTRY_ADDR"],
}


def _start(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    return subprocess.run([sys.executable, "-m", f"loopline_{service}"], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("service", sorted(CASES))
def test_missing_setting_is_one_line_naming_the_variable(service: str) -> None:
    out = _start(service, {})
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"loopline-{service}: ")
    for name in CASES[service]:
        assert f"{name} is required" in lines[0]
    assert "Traceback" not in out.stderr


def test_malformed_setting_names_the_variable_and_the_problem() -> None:
    env = {"LOOPLINE_KAFKA_BOOTSTRAP": "k:9092", "LOOPLINE_POSTGRES_DSN": "postgresql://u:pw@h/db",
           "LOOPLINE_S3_ENDPOINT": "http://s3:9000", "LOOPLINE_S3_ACCESS_KEY": "a",
           "LOOPLINE_S3_SECRET_KEY": "s", "LOOPLINE_METRICS_PORT": "ninety"}
    out = _start("registry", env)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "loopline-registry: LOOPLINE_METRICS_PORT: Input should be a valid integer, unable to parse string as an "
        "integer"]
