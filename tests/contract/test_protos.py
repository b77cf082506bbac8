"""Contracts: generated code matches protos/, buf lint passes, the inference contract is Triton's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tree(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()
            and "__pycache__" not in p.parts}


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = _tree(tmp_path / "loopline")
    checked_in = _tree(ROOT / "libs" / "contracts" / "loopline")
    assert fresh.keys() == checked_in.keys(), "run `make protos`"
    stale = [k for k in fresh if fresh[k] != checked_in[k]]
    assert not stale, f"stale generated code (run `make protos`): {stale}"


def test_buf_lint_passes() -> None:
    buf = ROOT / "tools" / "buf"
    if not buf.exists():
        buf_path = shutil.which("buf")
        assert buf_path, "buf is installed by `make setup` (npm @bufbuild/buf)"
        buf = Path(buf_path)
    res = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_inference_contract_is_tritons_own() -> None:
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: PLC0415

    assert service_pb2.DESCRIPTOR.package == "inference"
    assert service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert hasattr(service_pb2_grpc, "add_GRPCInferenceServiceServicer_to_server")
    assert model_config_pb2.ModelConfig


@pytest.mark.parametrize("module", ["loopline.registry.v1.registry_pb2", "loopline.ingest.v1.envelope_pb2",
                                    "loopline.feature.v1.feature_pb2_grpc", "loopline.monitor.v1.events_pb2"])
def test_contract_packages_import_by_their_proto_package(module: str) -> None:
    mod = __import__(module, fromlist=["DESCRIPTOR"])
    if hasattr(mod, "DESCRIPTOR"):
        assert mod.DESCRIPTOR.package == module.rsplit(".", 1)[0]
