"""The breaking-change gate: protos/ against the last released contracts (protos/released/v1.binpb).

A breaking change is a new ``v2`` package, never an edit in place. The released image is what
``tools/buf build protos -o protos/released/v1.binpb`` wrote at release time; rebuild it only when
cutting a release, never to make this test pass. The rule set is buf.yaml's ``FILE``: the
generated Python modules are imported by file and package, so a moved type breaks callers even
where the wire format would not notice.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
RELEASED = PROTOS / "released" / "v1.binpb"


def _buf() -> str:
    local = ROOT / "tools" / "buf"
    if local.exists():
        return str(local)
    found = shutil.which("buf")
    assert found, "buf is installed by `make setup` (npm @bufbuild/buf)"
    return found


def _breaking(protos: Path, error_format: str = "text") -> subprocess.CompletedProcess[str]:
    return subprocess.run([_buf(), "breaking", str(protos), "--against", str(RELEASED), "--error-format",
                           error_format], capture_output=True, text=True, check=False, timeout=120)


def test_released_contracts_image_exists() -> None:
    assert RELEASED.is_file() and RELEASED.stat().st_size > 0, f"missing {RELEASED.relative_to(ROOT)}"


def test_no_breaking_change_against_the_released_contracts() -> None:
    res = _breaking(PROTOS)
    assert res.returncode == 0, f"breaking change against {RELEASED.name} (make it a new v2):\n{res.stdout}{res.stderr}"


def test_the_gate_fails_when_a_field_is_deleted(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("released"))
    proto = copy / "loopline" / "common" / "v1" / "metadata.proto"
    text = proto.read_text()
    field = re.compile(r"^\s*string producer = 3;\n", re.MULTILINE)
    assert field.search(text), "the field this test deletes moved; pick another one"
    proto.write_text(field.sub("", text, count=1))

    res = _breaking(copy, "json")
    assert res.returncode != 0, f"buf breaking let a deleted field through:\n{res.stdout}{res.stderr}"
    found = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert [(f["type"], Path(f["path"]).name) for f in found] == [("FIELD_NO_DELETE", "metadata.proto")], found
    assert '"producer"' in found[0]["message"] and '"EventMetadata"' in found[0]["message"], found
