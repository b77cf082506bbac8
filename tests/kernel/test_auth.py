"""Authentication and per-client rate limits against the real servers (registry and inference as their
own processes, started once for the module), mTLS with a throwaway CA, the one-line start-up error, the
OpenAI HTTP API's 401/429, and a secret-leak check: after real traffic no log line, no record on any of
the module's topics and no row of its database holds a token, the S3 secret key or the signing key."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loopline.registry.v1 import registry_pb2 as pb
from loopline.registry.v1 import registry_pb2_grpc
from loopline_core import grpcx
from loopline_core.auth import REFUSED, ClientCredentials, ServerAuth, TokenTable, parse_tokens, write_tokens
from loopline_core.errors import not_found
from loopline_inference.domain.ratelimit import Limit, RateLimiter
from loopline_inference.handlers import openai_api
from loopline_inference.handlers.oip import Admission
from loopline_stack import StackState
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, _read_to_end, register_signed_model, set_alias
from loopline_testing.flow import metric, metrics_port, readyz
from loopline_testing.plugin import isolate
from pydantic import SecretStr
from tritonclient.grpc import service_pb2, service_pb2_grpc

BURST = 3
"""The rate-limited client's bucket; it refills so slowly (one request in ~17 minutes) that no timing matters."""


class Served:
    def __init__(self, svc: ServiceSet, env: dict[str, str], tokens: dict[str, str]) -> None:
        self.svc = svc
        self.env = env
        self.tokens = tokens

    def creds(self, client: str) -> ClientCredentials:
        return ClientCredentials(SecretStr(self.tokens[client]))


@pytest.fixture(scope="module")
async def served(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """Registry and inference with a tokens file of their own: the stack's clients plus ``limited``
    (BURST requests, then refused) and ``other`` (the default: unlimited)."""
    work = tmp_path_factory.mktemp("auth")
    env = await isolate(stack.env)
    tokens = parse_tokens(await asyncio.to_thread(Path(env["LOOPLINE_AUTH_TOKENS_FILE"]).read_text))
    tokens |= {"limited": "limited-" + "x" * 40, "other": "other-" + "y" * 40}
    write_tokens(work / "tokens", tokens)
    svc = ServiceSet(env, work / "logs", {
        "*": {"LOOPLINE_AUTH_TOKENS_FILE": str(work / "tokens")},
        "inference": {"LOOPLINE_INFERENCE_RATE_LIMIT_CLIENTS": json.dumps({"limited": {"rps": 0.001,
                                                                                     "burst": BURST}}),
                      "LOOPLINE_INFERENCE_RECONCILE_S": "2"}})
    await asyncio.to_thread(svc.start, names=("registry", "inference"))
    try:
        yield Served(svc, env, tokens)
    finally:
        await asyncio.to_thread(svc.stop)


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


BAD = [(), (("authorization", "Bearer not-a-token"),), (("authorization", "Basic dXNlcjpwdw=="),),
       (("authorization", "Bearer"),), (("authorization", "bearer  two words"),)]


async def test_without_valid_credentials_every_service_answers_unauthenticated_alike(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.svc.addr("registry")) as reg, \
            grpc.aio.insecure_channel(served.svc.addr("inference")) as inf:
        registry = registry_pb2_grpc.RegistryServiceStub(reg)
        inference = service_pb2_grpc.GRPCInferenceServiceStub(inf)
        for metadata in BAD:
            for call in (registry.GetModelVersion(pb.GetModelVersionRequest(model_name="m", version=1),
                                                  metadata=metadata, timeout=10),
                         inference.ServerLive(service_pb2.ServerLiveRequest(), metadata=metadata, timeout=10),
                         inference.ModelInfer(service_pb2.ModelInferRequest(model_name="fraud"), metadata=metadata,
                                              timeout=10)):
                assert await _code(call) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED), metadata
            # a streaming RPC too, before it reads a request
            stream = inference.ModelStreamInfer(iter([service_pb2.ModelInferRequest(model_name="fraud")]),
                                                metadata=metadata, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream:
                    pass
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED)


async def test_a_valid_token_passes_and_health_needs_none(served: Served) -> None:
    async with grpcx.channel(served.svc.addr("registry"), served.creds("other")) as reg:
        code, _ = await _code(registry_pb2_grpc.RegistryServiceStub(reg).GetModelVersion(
            pb.GetModelVersionRequest(model_name="nothing", version=1), timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND  # authenticated; the registry answered

    def blocking() -> grpc.StatusCode:
        with grpcx.sync_channel(served.svc.addr("registry"), served.creds("other")) as ch:
            try:
                registry_pb2_grpc.RegistryServiceStub(ch).GetModelVersion(
                    pb.GetModelVersionRequest(model_name="nothing", version=1), timeout=10)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    assert await asyncio.to_thread(blocking) == grpc.StatusCode.NOT_FOUND  # the blocking channel too
    client = grpcx.with_auth(tga.InferenceServerClient(served.svc.addr("inference")), served.creds("other"))
    try:
        assert await client.is_server_live()
    finally:
        await client.close()
    for name, service in (("registry", "loopline.registry.v1.RegistryService"),
                          ("inference", "inference.GRPCInferenceService")):
        async with grpc.aio.insecure_channel(served.svc.addr(name)) as ch:  # a probe: no token
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=10)
            assert resp.status in (health_pb2.HealthCheckResponse.SERVING,
                                   health_pb2.HealthCheckResponse.NOT_SERVING)


async def test_a_client_over_its_rate_limit_is_refused_and_another_is_not(served: Served) -> None:
    x = np.zeros((1, len(FEATURES)), np.float32)
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    async def codes(client: str, n: int) -> list[str]:
        c = grpcx.with_auth(tga.InferenceServerClient(served.svc.addr("inference")), served.creds(client))
        out = []
        try:
            for _ in range(n):
                try:
                    await c.infer("fraud", [inp])
                    out.append("OK")
                except Exception as exc:  # noqa: BLE001 - the status is what is asserted
                    out.append(str(getattr(exc, "status", lambda: "")()))
        finally:
            await c.close()
        return out

    limited = await codes("limited", BURST + 3)
    assert all("RESOURCE_EXHAUSTED" not in c for c in limited[:BURST]), limited
    assert all("RESOURCE_EXHAUSTED" in c for c in limited[BURST:]), limited
    other = await codes("other", BURST + 3)
    assert all("RESOURCE_EXHAUSTED" not in c for c in other), other
    port = metrics_port(served.svc.running["inference"].log)
    assert metric(port, "loopline_inference_rate_limited_total", client="limited") == 3
    assert metric(port, "loopline_inference_rate_limited_total", client="other") == 0
    assert metric(port, "loopline_inference_in_flight", model="fraud") == 0  # every call counted out again
    assert readyz(port) == 503, "no champion loaded yet: not ready"


async def test_secrets_appear_in_no_log_topic_or_table(served: Served, stack: StackState) -> None:
    """Real traffic first (a signed model registered, promoted, loaded and scored: model events,
    prediction rows, registry rows, audit), then every place it left a trace is searched."""
    registry = served.svc.addr("registry")
    v = await register_signed_model(served.env, registry, "fraud", seed=3)
    await set_alias(registry, "fraud", "champion", v.version)
    client = grpcx.with_auth(tga.InferenceServerClient(served.svc.addr("inference")))
    x = np.random.default_rng(1).normal(size=(4, len(FEATURES))).astype(np.float32)
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        async with asyncio.timeout(90):
            while True:
                try:
                    await client.infer("fraud", [inp])
                    break
                except Exception:  # noqa: BLE001 - not loaded yet
                    await asyncio.sleep(0.5)
        for _ in range(20):
            await client.infer("fraud", [inp])
    finally:
        await client.close()
    assert readyz(metrics_port(served.svc.running["inference"].log)) == 200, "every configured model serves"

    secrets = _secrets(stack.env, served.tokens)
    places: dict[str, bytes] = {}
    await asyncio.sleep(2)  # the prediction log publishes off the response path
    for log in served.svc.log_dir.glob("*.log"):
        places[f"log {log.name}"] = log.read_bytes()
    prefix = served.env["LOOPLINE_TOPIC_PREFIX"]
    bootstrap = served.env["LOOPLINE_KAFKA_BOOTSTRAP"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
    finally:
        await admin.close()
    assert any(".predictions." in t for t in topics), topics
    records = 0
    for topic in topics:
        for r in await _read_to_end(bootstrap, topic, 60):
            records += 1
            places[f"topic {topic}"] = places.get(f"topic {topic}", b"") + (r.key or b"") + r.value + b"".join(
                k.encode() + v for k, v in r.headers)
    assert records > 0
    conn = await asyncpg.connect(served.env["LOOPLINE_POSTGRES_DSN"])
    try:
        tables = [r["t"] for r in await conn.fetch(
            "select quote_ident(table_schema) || '.' || quote_ident(table_name) as t from information_schema.tables "
            "where table_schema not in ('pg_catalog', 'information_schema')")]
        for t in tables:
            rows = await conn.fetch(f"select t::text as row from {t} as t")  # names from the catalog
            places[f"table {t}"] = "\n".join(r["row"] for r in rows).encode()
    finally:
        await conn.close()
    assert tables
    leaks = [(where, name) for where, blob in places.items() for name, value in secrets.items() if value in blob]
    assert not leaks, leaks


def _secrets(env: dict[str, str], tokens: dict[str, str]) -> dict[str, bytes]:
    out = {f"token of {client}": token.encode() for client, token in tokens.items()}
    out["S3 secret key"] = env["LOOPLINE_S3_SECRET_KEY"].encode()
    keys = Path(env["LOOPLINE_SIGNING_KEY"]).resolve().parent
    for pem in keys.glob("*.key"):
        body = [line for line in pem.read_text().splitlines() if line and not line.startswith("-----")]
        out[f"signing key {pem.name}"] = "".join(body)[:40].encode()
        out[f"signing key {pem.name} line 1"] = body[0].encode()
    assert any(k.startswith("signing key") for k in out), keys
    return out


# ---- the OpenAI HTTP API (the FastAPI app in process; the LLM suite calls the real one) ---------------


class _NoEngine:
    def knows(self, _model: str) -> bool:
        return False

    def served(self) -> list[tuple[str, int]]:
        return []

    async def generate(self, req: Any) -> Any:
        raise not_found(f"unknown model {req.model!r}")


async def test_http_api_answers_401_alike_and_429_over_the_limit(tmp_path: Path) -> None:
    write_tokens(tmp_path / "tokens", {"alice": "alice-token-" + "a" * 30})
    gate = Admission(ServerAuth("token", tokens=TokenTable(tmp_path / "tokens")), RateLimiter(Limit(0.001, 1)))
    app = openai_api.app(_NoEngine(), gate)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
        bodies = []
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic YTpi"},
                        {"authorization": "Bearer"}):
            r = await http.post("/v1/completions", json={"model": "m", "prompt": "hi"}, headers=headers)
            assert r.status_code == 401
            bodies.append(r.json())
        assert all(b == {"error": {"message": REFUSED, "type": "authentication_error", "param": None,
                                   "code": "invalid_api_key"}} for b in bodies), bodies
        ok = {"authorization": "Bearer alice-token-" + "a" * 30}
        assert (await http.get("/v1/models", headers=ok)).status_code == 200
        assert (await http.get("/v1/models")).status_code == 401
        first = await http.post("/v1/completions", json={"model": "m", "prompt": "hi"}, headers=ok)
        assert first.status_code == 404  # through authentication and the limit, to the (absent) model
        second = await http.post("/v1/completions", json={"model": "m", "prompt": "hi"}, headers=ok)
        assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"


# ---- mTLS ---------------------------------------------------------------------------------------------


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer[0] if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pki(d: Path, cns: list[str]) -> dict[str, tuple[Path, Path]]:
    """A throwaway CA (``ca.pem``) and a certificate + key per common name, PEM files under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"ca {d.name}", ca_key, None, ca=True)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {}
    for cn in cns:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, (ca.subject, ca_key))
        (d / f"{cn}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{cn}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        out[cn] = (d / f"{cn}.pem", d / f"{cn}.key")
    return out


async def test_mtls_refuses_a_client_without_a_certificate_from_the_ca(isolated: dict[str, str],
                                                                      tmp_path: Path) -> None:
    certs = _pki(tmp_path / "pki", ["registry", "alice"])
    stranger = _pki(tmp_path / "other-ca", ["mallory"])
    ca = tmp_path / "pki" / "ca.pem"
    mtls = {"LOOPLINE_AUTH_MODE": "mtls", "LOOPLINE_AUTH_TLS_CERT": str(certs["registry"][0]),
            "LOOPLINE_AUTH_TLS_KEY": str(certs["registry"][1]), "LOOPLINE_AUTH_TLS_CA": str(ca)}
    svc = ServiceSet(isolated, tmp_path / "logs", {"registry": mtls})
    await asyncio.to_thread(svc.start, names=("registry",))
    try:
        addr = svc.addr("registry")
        request = pb.GetModelVersionRequest(model_name="nothing", version=1)

        async def call(creds: ClientCredentials) -> grpc.StatusCode:
            async with grpcx.channel(addr, creds) as ch:
                code, _ = await _code(registry_pb2_grpc.RegistryServiceStub(ch).GetModelVersion(request, timeout=5))
                return code

        alice = ClientCredentials(tls_cert=certs["alice"][0].read_bytes(), tls_key=certs["alice"][1].read_bytes(),
                                  tls_ca=ca.read_bytes())
        assert await call(alice) == grpc.StatusCode.NOT_FOUND  # through, answered by the registry
        assert await call(ClientCredentials(tls_ca=ca.read_bytes())) == grpc.StatusCode.UNAVAILABLE  # no cert
        mallory = ClientCredentials(tls_cert=stranger["mallory"][0].read_bytes(),
                                    tls_key=stranger["mallory"][1].read_bytes(), tls_ca=ca.read_bytes())
        assert await call(mallory) == grpc.StatusCode.UNAVAILABLE  # a certificate from another CA
        async with grpc.aio.insecure_channel(addr) as plain:  # no TLS at all
            code, _ = await _code(registry_pb2_grpc.RegistryServiceStub(plain).GetModelVersion(request, timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await asyncio.to_thread(svc.stop)


async def test_token_mode_without_a_tokens_file_stops_the_service_with_one_line(isolated: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    svc = ServiceSet({k: v for k, v in isolated.items() if k != "LOOPLINE_AUTH_TOKENS_FILE"}, tmp_path)
    svc.ports = {"registry": 0, "feature": 0, "inference": 0, "inference_http": 0}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "loopline_registry"],
                                     env=svc.env_for("registry"), capture_output=True, text=True, timeout=120,
                                     check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "loopline-registry: LOOPLINE_AUTH_TOKENS_FILE is required (LOOPLINE_AUTH_MODE=token; "
        "LOOPLINE_AUTH_MODE=none opts out)")


# ---- the tokens file ------------------------------------------------------------------------------------


def test_tokens_file_formats_rotation_and_bearer_parsing(tmp_path: Path) -> None:
    assert parse_tokens("# comment\nalice  tok-a\n\nbob tok-b # trailing\n") == {"alice": "tok-a", "bob": "tok-b"}
    assert parse_tokens('{"alice": "tok-a"}') == {"alice": "tok-a"}
    with pytest.raises(ValueError, match="line 1"):
        parse_tokens("alice tok-a extra")
    path = tmp_path / "tokens"
    write_tokens(path, {"alice": "tok-a"})
    assert path.stat().st_mode & 0o777 == 0o600
    table = TokenTable(path, recheck_s=0)
    auth = ServerAuth("token", tokens=table)
    assert auth.identify_token("Bearer tok-a") == "alice"
    assert auth.identify_token("bearer tok-a") == "alice"
    for bad in (None, "", "tok-a", "Basic tok-a", "Bearer", "Bearer tok-b", "Bearer tok-a extra"):
        assert auth.identify_token(bad) is None, bad
    path.write_text("alice tok-a\nalice tok-a2\n")  # rotating: old and new token side by side
    assert (auth.identify_token("Bearer tok-a"), auth.identify_token("Bearer tok-a2")) == ("alice", "alice")
    write_tokens(path, {"alice": "tok-a2", "carol": "tok-c-longer"})  # rotation: re-read on change
    assert auth.identify_token("Bearer tok-a") is None
    assert auth.identify_token("Bearer tok-c-longer") == "carol"
    path.write_text("not a valid line at all\n")  # a broken file keeps the last good table
    assert auth.identify_token("Bearer tok-c-longer") == "carol"
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(ValueError, match="holds no token"):
        TokenTable(tmp_path / "empty")
