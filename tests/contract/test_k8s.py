"""The Kubernetes manifests (infra/k8s): each overlay rendered by the real ``kubectl kustomize``, every
object validated offline against the Kubernetes 1.32 schemas (kubernetes-validate, strict) and KEDA's
ScaledObject CRD schema (vendored), then checked against what the services really read and serve.

No cluster is needed: what these tests cannot show (images pull, pods start, KEDA and the Prometheus
adapter scale) is listed in infra/k8s/README.md.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from loopline_core.kafka.topics import TopicNamer
from loopline_core.settings import CoreSettings
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSION = "1.32"
KEDA_CRD = K8S / "schemas" / "keda.sh_scaledobjects.yaml"
OVERLAYS = ("local", "production")
SERVICES = ("ingest", "validator", "feature", "registry", "inference", "trainer", "monitor", "retrainer")
METRICS_PORT = 9464
GRPC_PORTS = {"registry": 50051, "feature": 50052, "inference": 8001}
"""The fixed gRPC ports the services listen on by default (their settings files)."""
SINGLETONS = {"monitor", "retrainer"}
"""Kept at one replica (infra/k8s/components/autoscaling/keda.yaml says why)."""
MADE_BY_HAND = {"loopline-signing-key", "loopline-trusted-keys"}
"""Key material the local overlay does not generate (infra/k8s/README.md has the commands)."""

Doc = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: the manifests are rendered with the real `kubectl kustomize` "
                    "(v1.32 on the development machines and CI, see ENVIRONMENT.md); install it, do not skip")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def loopline_deployments(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {n: d for n, d in of_kind(docs, "Deployment").items()
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "loopline"}


def workloads(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    """The services' Deployments and the init Job, by service name (``init`` for the Job)."""
    jobs = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: d
            for d in of_kind(docs, "Job").values()}
    return {**loopline_deployments(docs), **jobs}


def container(dep: Doc) -> Doc:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, dep["metadata"]["name"]
    c: Doc = containers[0]
    return c


def environment(docs: tuple[Doc, ...], dep: Doc) -> dict[str, str | None]:
    """Every variable the container gets: its ConfigMaps' values, then ``env`` (None: from a Secret)."""
    maps = of_kind(docs, "ConfigMap")
    c = container(dep)
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        assert "configMapRef" in source, f"{dep['metadata']['name']}: only ConfigMaps are taken whole"
        name = source["configMapRef"]["name"]
        assert name in maps, f"{dep['metadata']['name']} reads ConfigMap {name}, which is not rendered"
        env.update(maps[name].get("data", {}))
    for var in c.get("env", []):
        env[var["name"]] = var.get("value")
        ref = var.get("valueFrom", {})
        if ref:
            assert set(ref) == {"secretKeyRef"}, f"{var['name']}: secret values come from Secrets"
    return env


@cache
def settings_class(service: str) -> type[BaseSettings]:
    if service == "init":  # loopline init reads the connections only
        return CoreSettings
    cls: type[BaseSettings] = importlib.import_module(f"loopline_{service}.settings").Settings
    return cls


def variables(service: str) -> tuple[set[str], set[str]]:
    """(required, known) ``LOOPLINE_*`` names of a service's Settings."""
    fields = settings_class(service).model_fields
    known = {f"LOOPLINE_{name.upper()}" for name in fields}
    required = {f"LOOPLINE_{name.upper()}" for name, f in fields.items() if f.is_required()}
    return required, known


def container_port(dep: Doc, port: int | str) -> int:
    for p in container(dep).get("ports", []):
        if port in (p["name"], p["containerPort"]):
            number: int = p["containerPort"]
            return number
    raise AssertionError(f"{dep['metadata']['name']} has no container port {port!r}")


def strict(schema: Any) -> Any:
    """An OpenAPI schema of a CRD as the API server applies it with strict field validation: an object
    with ``properties`` and no ``additionalProperties`` takes no other field."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def scaledobject_schema() -> Doc:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: Doc = strict(version["schema"]["openAPIV3Schema"])
    return schema


# ---- schemas --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    problems = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            errors = jsonschema.Draft202012Validator(scaledobject_schema()).iter_errors(doc)
            problems += [f"{where}: {e.json_path}: {e.message}" for e in errors]
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_the_schema_check_catches_an_unknown_field() -> None:
    """The two validators are strict: a misspelt field fails, in a core object and in a ScaledObject."""
    dep = dict(loopline_deployments(render("local"))["validator"])
    dep["spec"] = {**dep["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSION, strict=True)
    so = dict(of_kind(render("production"), "ScaledObject")["validator"])
    so["spec"] = {**so["spec"], "maxReplicas": 3}
    assert list(jsonschema.Draft202012Validator(scaledobject_schema()).iter_errors(so))


def test_the_keda_schema_is_the_pinned_release() -> None:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    assert crd["metadata"]["name"] == "scaledobjects.keda.sh"
    assert "v2.17.3" in (K8S / "schemas" / "README.md").read_text()


# ---- what the services need -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_deployment_a_service_and_the_rest(overlay: str) -> None:
    docs = render(overlay)
    deps = loopline_deployments(docs)
    assert set(deps) == set(SERVICES)
    for kind in ("Service", "ServiceAccount", "PodDisruptionBudget"):
        assert set(SERVICES) <= set(of_kind(docs, kind)), kind
    for name, dep in deps.items():
        spec = dep["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == name
        assert container(dep)["image"].split("/")[-1].startswith(f"loopline-{name}"), name
        assert spec["terminationGracePeriodSeconds"] >= 30, name
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)
        resources = container(dep)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_on_the_metrics_port(overlay: str) -> None:
    for name, dep in loopline_deployments(render(overlay)).items():
        c = container(dep)
        assert container_port(dep, "metrics") == METRICS_PORT, name
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert container_port(dep, get["port"]) == METRICS_PORT, (name, probe)
        if name == "inference":  # a model (or an LLM engine) may take minutes to load
            get = c["startupProbe"]["httpGet"]
            assert container_port(dep, get["port"]) == METRICS_PORT
            assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_as_non_root(overlay: str) -> None:
    assert "init" in workloads(render(overlay))
    for name, dep in workloads(render(overlay)).items():
        pod = dep["spec"]["template"]["spec"].get("securityContext", {})
        sc = {**pod, **container(dep).get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, name
        assert sc.get("runAsUser", 1) != 0, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
        mounts = {m["mountPath"] for m in container(dep).get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"  # noqa: S108


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_required_setting_is_provided_and_every_given_one_is_read(overlay: str) -> None:
    """The required ``LOOPLINE_*`` fields of each Settings class are set (a pod would exit at start
    otherwise), and no ``LOOPLINE_*`` variable is one its service does not read (pydantic ignores an
    unknown variable silently: a misspelt name would leave the default in force)."""
    docs = render(overlay)
    for name, dep in workloads(docs).items():
        env = environment(docs, dep)
        required, known = variables(name)
        missing = required - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        unknown = {v for v in env if v.startswith("LOOPLINE_") and v.split("__")[0] not in known}
        assert not unknown, f"{name} is given {sorted(unknown)}, which its Settings does not read"
        for secret in ("LOOPLINE_POSTGRES_DSN", "LOOPLINE_S3_ACCESS_KEY", "LOOPLINE_S3_SECRET_KEY"):
            assert env[secret] is None, f"{name}: {secret} must come from a Secret, not a value"


def volume_of(mounts: dict[str, Doc], path: str) -> Doc:
    """The volume a file path lies on, given ``mountPath -> volume``."""
    for mount, volume in mounts.items():
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return volume
    raise AssertionError(f"{path} is on no mounted volume")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_and_keys_are_files_from_secrets(overlay: str) -> None:
    """Servers read their tokens file, clients their token, the trainer its signing key, all from mounted
    Secrets; readers of signed artifacts mount the trusted public keys."""
    docs = render(overlay)
    for name, dep in loopline_deployments(docs).items():
        env = environment(docs, dep)
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container(dep).get("volumeMounts", [])}

        wants = []
        if name in GRPC_PORTS:
            wants.append(("LOOPLINE_AUTH_TOKENS_FILE", "secret"))
        if env.get("LOOPLINE_REGISTRY_ADDR") or env.get("LOOPLINE_FEATURE_ADDR"):
            wants.append(("LOOPLINE_AUTH_TOKEN_FILE", "secret"))
        if "LOOPLINE_SIGNING_KEY" in env:
            wants.append(("LOOPLINE_SIGNING_KEY", "secret"))
        if "LOOPLINE_TRUSTED_KEYS_DIR" in variables(name)[1]:
            wants.append(("LOOPLINE_TRUSTED_KEYS_DIR", "configMap"))
        for var, kind in wants:
            assert env.get(var), f"{name} needs {var}"
            assert kind in volume_of(mounts, str(env[var])), f"{name}: {var} is not on a {kind} volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_ports_match_the_containers(overlay: str) -> None:
    docs = render(overlay)
    deps = of_kind(docs, "Deployment")
    for name, svc in of_kind(docs, "Service").items():
        selector = svc["spec"]["selector"]
        targets = [d for d in deps.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        for port in svc["spec"]["ports"]:
            assert container_port(targets[0], port.get("targetPort", port["port"])) == port["port"], (name, port)
    loopline = of_kind(docs, "Service")
    for name in SERVICES:
        ports = {p["name"]: p["port"] for p in loopline[name]["spec"]["ports"]}
        assert ports["metrics"] == METRICS_PORT
        if name in GRPC_PORTS:
            assert ports["grpc"] == GRPC_PORTS[name], name
    assert {p["name"]: p["port"] for p in loopline["inference"]["spec"]["ports"]}["http"] == 8000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_address_resolves_to_a_service_port(overlay: str) -> None:
    docs = render(overlay)
    services = of_kind(docs, "Service")
    namespace = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    for name, dep in loopline_deployments(docs).items():
        for var, value in environment(docs, dep).items():
            if not (var.startswith("LOOPLINE_") and var.endswith("_ADDR")) or not value:
                continue
            host, _, port = value.rpartition(":")
            host = re.sub(rf"\.{namespace}(\.svc(\.cluster\.local)?)?$", "", host)
            assert host in services, f"{name}: {var}={value} names no Service"
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, f"{name}: {var}={value}"


# ---- autoscaling ----------------------------------------------------------------------------------------------


def expected_subscriptions(service: str, prefix: str) -> set[tuple[str, str]]:
    """(consumer group, topic) pairs each service's main.py subscribes with, from TopicNamer and the
    Settings defaults the manifests leave in place."""
    n = TopicNamer(prefix)
    s = settings_class(service).model_fields
    datasets: list[str] = s["datasets"].default
    by_service: dict[str, set[tuple[str, str]]] = {
        "ingest": {(n.group("ingest"), n.raw(d)) for d in datasets}
        | {(n.group("ingest-archive"), n.ingested(d)) for d in datasets},
        "validator": {(n.group("validator"), n.ingested(d)) for d in datasets},
        "feature": {(n.group("feature"), n.valid(d)) for d in datasets}
        | {(n.group("feature-labels"), n.labels(d)) for d in datasets},
        "trainer": {(n.group("trainer"), n.training_requests())},
    }
    if service == "monitor":
        return {(n.group("monitor"), n.predictions(m)) for m in s["monitor_models"].default} | \
            {(n.group("monitor-labels"), n.labels(s["monitor_dataset"].default))}
    if service == "retrainer":
        return {(n.group("retrainer"), n.alerts()), (n.group("retrainer-results"), n.training_results()),
                (n.group("retrainer-labels"), n.labels(s["retrainer_dataset"].default))} | \
            {(n.group("retrainer-rollouts"), n.predictions(m)) for m in s["retrainer_rollout_models"].default}
    return by_service.get(service, set())


def test_the_init_job_makes_the_partitions_the_scalers_count_on() -> None:
    docs = render("production")
    args = container(workloads(docs)["init"])["args"]
    partitions = int(args[args.index("--partitions") + 1])
    for so in of_kind(docs, "ScaledObject").values():
        assert so["spec"]["maxReplicaCount"] <= partitions, so["metadata"]["name"]


def test_scaled_objects_watch_the_groups_and_topics_the_services_use() -> None:
    docs = render("production")
    deps = loopline_deployments(docs)
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == {"ingest", "validator", "feature", "trainer"}
    for name, so in scaled.items():
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target["name"] in deps, name
        dep = deps[target["name"]]
        env = environment(docs, dep)
        prefix = str(env.get("LOOPLINE_TOPIC_PREFIX") or settings_class(target["name"]).model_fields[
            "topic_prefix"].default)
        used = expected_subscriptions(target["name"], prefix)
        partitions = int(so["metadata"]["annotations"]["loopline.io/topic-partitions"])
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions, name
        assert "replicas" not in dep["spec"], f"{name}: KEDA owns the replica count"
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "kafka"
            meta = trigger["metadata"]
            assert (meta["consumerGroup"], meta["topic"]) in used, f"{name}: {meta} is no subscription of it"
            servers = meta.get("bootstrapServers") or env.get(meta["bootstrapServersFromEnv"])
            assert servers == env["LOOPLINE_KAFKA_BOOTSTRAP"], name
            assert meta.get("offsetResetPolicy") == "earliest"  # as the services' consumers start
            assert int(meta["lagThreshold"]) >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_singletons_stay_single(overlay: str) -> None:
    docs = render(overlay)
    deps = loopline_deployments(docs)
    targets = {so["spec"]["scaleTargetRef"]["name"] for so in of_kind(docs, "ScaledObject").values()}
    targets |= {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler").values()}
    for name in SINGLETONS:
        assert name not in targets
        assert deps[name]["spec"]["replicas"] == 1
        assert deps[name]["spec"]["strategy"]["type"] == "Recreate"


def test_the_inference_hpa_uses_a_metric_inference_exports() -> None:
    docs = render("production")
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert "replicas" not in loopline_deployments(docs)["inference"]["spec"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    exported = (ROOT / "services" / "inference" / "src" / "loopline_inference" / "metrics.py").read_text()
    assert f'"{metrics["Pods"]["pods"]["metric"]["name"]}"' in exported


def test_production_pins_images_by_digest_and_spreads_pods() -> None:
    for name, workload in workloads(render("production")).items():
        assert re.search(r"@sha256:[0-9a-f]{64}$", container(workload)["image"]), name
    for name, dep in loopline_deployments(render("production")).items():
        keys = {c["topologyKey"] for c in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
    pdbs = of_kind(render("production"), "PodDisruptionBudget")
    for name in ("ingest", "validator", "feature", "registry", "inference"):
        assert pdbs[name]["spec"]["minAvailable"] == 1, name


def test_local_generates_what_it_references() -> None:
    """The local overlay brings its own Secrets and ConfigMaps, but for the key material made by hand."""
    docs = render("local")
    have = set(of_kind(docs, "Secret")) | set(of_kind(docs, "ConfigMap"))
    for name, dep in workloads(docs).items():
        spec = dep["spec"]["template"]["spec"]
        refs = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        refs |= {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
        refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container(dep).get("env", []) if "valueFrom" in e}
        assert refs - MADE_BY_HAND <= have, f"{name} needs {sorted(refs - MADE_BY_HAND - have)}"
        assert dep["kind"] == "Job" or dep["spec"]["replicas"] == 1
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "HorizontalPodAutoscaler")
