"""Contracts: generated code matches protos/, buf lint passes, the inference contract is Triton's."""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import subprocess
import sys
import typing
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import message_factory

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "libs" / "contracts"
GENERATED = sorted(".".join(p.relative_to(CONTRACTS).with_suffix("").parts)
                   for p in (CONTRACTS / "loopline").rglob("*.py") if p.name.endswith(("_pb2.py", "_pb2_grpc.py")))
# The Open Inference Protocol RPCs the inference service claims to serve (its README, Triton's clients).
OIP_RPCS = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer",
            "ModelStreamInfer", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}


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


def _registered_servicer_class(main: ModuleType) -> str:
    """The class whose instance ``main`` passes to Triton's ``add_GRPCInferenceServiceServicer_to_server``."""
    tree = ast.parse(inspect.getsource(main))
    made = {t.id: n.value.func.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
            for t in n.targets if isinstance(t, ast.Name)}
    adds = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "add_GRPCInferenceServiceServicer_to_server"
            and isinstance(n.func.value, ast.Name) and n.func.value.id == "service_pb2_grpc"]
    assert len(adds) == 1, "inference registers Triton's GRPCInferenceService exactly once"
    arg = adds[0].args[0]
    assert isinstance(arg, ast.Name) and arg.id in made, ast.dump(arg)
    return made[arg.id]


def test_inference_service_registers_and_implements_tritons_grpc_inference_service() -> None:
    from loopline_inference import main  # noqa: PLC0415
    from loopline_inference.handlers import oip  # noqa: PLC0415
    from loopline_stack.services import GRPC  # noqa: PLC0415
    from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: PLC0415

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert main.service_pb2_grpc is service_pb2_grpc, "the servicer is added with Triton's own generated code"
    assert GRPC["inference"] == service.full_name, "the health name the process reports is Triton's service"
    cls = getattr(oip, _registered_servicer_class(main))
    assert cls is getattr(main, cls.__name__)
    base = service_pb2_grpc.GRPCInferenceServiceServicer
    assert issubclass(cls, base)

    own = {name for klass in cls.__mro__ if klass not in base.__mro__ for name in vars(klass)}
    rpcs = {m.name: m for m in service.methods}
    claimed = {name for name in own if name in rpcs}
    missing = OIP_RPCS - claimed
    assert not missing, f"{cls.__name__} leaves these to Triton's UNIMPLEMENTED base: {sorted(missing)}"
    strays = {name for name in own if name[:1].isupper() and callable(getattr(cls, name)) and name not in rpcs}
    assert not strays, f"not RPCs of {service.full_name} (typos?): {sorted(strays)}"
    for name in sorted(claimed):
        method, rpc = getattr(cls, name), rpcs[name]
        hints = typing.get_type_hints(method)
        params = list(inspect.signature(method).parameters)
        assert params[:1] == ["self"] and len(params) == 3, f"{name}{inspect.signature(method)}"
        if rpc.server_streaming:  # answered as an async generator over an async iterator of requests
            assert inspect.isasyncgenfunction(method), f"{name} must be an async generator (grpc.aio stream)"
            assert typing.get_args(hints[params[1]])[0].DESCRIPTOR.full_name == rpc.input_type.full_name, name
            assert typing.get_args(hints["return"])[0].DESCRIPTOR.full_name == rpc.output_type.full_name, name
            continue
        assert inspect.iscoroutinefunction(method), f"{name} must be async (grpc.aio server)"
        assert hints[params[1]].DESCRIPTOR.full_name == rpc.input_type.full_name, name
        assert hints["return"].DESCRIPTOR.full_name == rpc.output_type.full_name, name


def test_every_proto_has_both_generated_modules() -> None:
    protos = sorted((ROOT / "protos" / "loopline").rglob("*.proto"))
    assert protos
    wanted = {".".join(p.relative_to(ROOT / "protos").with_suffix("").parts) + suffix
              for p in protos for suffix in ("_pb2", "_pb2_grpc")}
    assert wanted == set(GENERATED), "run `make protos`"


@pytest.mark.parametrize("module", GENERATED)
def test_generated_module_matches_its_proto(module: str) -> None:
    mod = importlib.import_module(module)
    package = module.rsplit(".", 1)[0]
    if module.endswith("_pb2"):
        assert mod.DESCRIPTOR.package == package
        assert mod.DESCRIPTOR.name == module.replace(".", "/").removesuffix("_pb2") + ".proto"
        return
    pb2 = importlib.import_module(module.removesuffix("_grpc"))
    assert pb2.DESCRIPTOR.package == package
    services = pb2.DESCRIPTOR.services_by_name
    assert {n.removesuffix("Stub") for n in vars(mod) if n.endswith("Stub")} == set(services)
    assert {n.removesuffix("Servicer") for n in vars(mod) if n.endswith("Servicer")} == set(services)
    for name, service in services.items():
        assert service.full_name == f"{package}.{name}"
        assert callable(getattr(mod, f"add_{name}Servicer_to_server"))
        _round_trip(mod, service)


def _round_trip(mod: ModuleType, service: typing.Any) -> None:
    """Serve the generated servicer on a real port and call every method through the generated stub.

    The base servicer answers UNIMPLEMENTED "Method not implemented!"; a path the server does not
    know answers "Method not found!". So this proves stub paths, registration and descriptor agree.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    getattr(mod, f"add_{service.name}Servicer_to_server")(getattr(mod, f"{service.name}Servicer")(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = getattr(mod, f"{service.name}Stub")(channel)
            for method in service.methods:
                call = getattr(stub, method.name)
                if method.client_streaming or method.server_streaming:
                    continue
                with pytest.raises(grpc.RpcError) as err:
                    call(message_factory.GetMessageClass(method.input_type)(), timeout=10)
                rpc_error = typing.cast(grpc.Call, err.value)
                assert rpc_error.code() == grpc.StatusCode.UNIMPLEMENTED, method.full_name
                assert rpc_error.details() == "Method not implemented!", method.full_name
    finally:
        server.stop(None)
