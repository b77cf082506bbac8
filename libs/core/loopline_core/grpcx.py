"""gRPC plumbing: servers (OpenTelemetry's interceptor, authentication, LooplineError kinds -> status codes)
and the one client channel factory every caller of the platform's services uses (bearer token or mTLS,
OpenTelemetry's client interceptors)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor

from loopline_core.auth import OPEN_METHODS, REFUSED, ClientCredentials, ServerAuth
from loopline_core.errors import ErrorKind, LooplineError

log = logging.getLogger(__name__)

STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


# A peer's status back to a kind. Load and availability codes (UNAVAILABLE, DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED, ...) are transient on the caller's side whatever the peer meant: UNAVAILABLE.
KINDS: dict[grpc.StatusCode, ErrorKind] = {
    grpc.StatusCode.NOT_FOUND: ErrorKind.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorKind.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS: ErrorKind.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED: ErrorKind.ABORTED,
}
_DETAIL_PREFIX = "x-loopline-"


def error_from_status(exc: grpc.aio.AioRpcError, peer: str = "") -> LooplineError:
    """A peer's status as a :class:`LooplineError` (the inverse of the server interceptor): its kind,
    its message prefixed with ``peer``, and its trailing ``x-loopline-*`` metadata as details."""
    details = {k[len(_DETAIL_PREFIX):].replace("-", "_"): str(v) for k, v in (exc.trailing_metadata() or ())
               if isinstance(k, str) and k.startswith(_DETAIL_PREFIX)}
    message = exc.details() or str(exc.code())
    return LooplineError(KINDS.get(exc.code(), ErrorKind.UNAVAILABLE), f"{peer}: {message}" if peer else message,
                         details)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary handlers: map :class:`LooplineError` to a status (OpenTelemetry's interceptor, ahead
    of this one, makes the server span and continues the caller's trace)."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def wrapped(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await inner(request, ctx)
            except LooplineError as exc:
                # details travel as trailing metadata (x-loopline-<name>), e.g. a CAS loser's current holder
                trailers = tuple((f"{_DETAIL_PREFIX}{k.replace('_', '-')}", _header_value(v))
                                 for k, v in exc.details.items())
                await ctx.abort(STATUS[exc.kind], exc.message, trailers)

        return grpc.unary_unary_rpc_method_handler(wrapped, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call without valid credentials (UNAUTHENTICATED, one message for every reason), unary
    and streaming alike; health checks and reflection stay open. In mode ``mtls`` the TLS handshake has
    already refused a client without a certificate from the CA, so every call that gets here passes."""

    def __init__(self, auth: ServerAuth) -> None:
        self.auth = auth

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or self.auth.mode != "token" or details.method.startswith(OPEN_METHODS):
            return handler
        if self.auth.identify_metadata(details.invocation_metadata) is not None:
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED without running it."""

    async def refuse(_request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)

    async def refuse_stream(_request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)
        yield None  # pragma: no cover - abort raises

    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)


def _header_value(value: object) -> str:
    """Metadata values must be printable ASCII."""
    text = str(value).encode("ascii", "backslashreplace").decode()
    return "".join(c if " " <= c <= "~" else " " for c in text)[:1024]


async def start_server(adders: Iterable[Callable[[grpc.aio.Server], None]], port: int,
                       health_services: Iterable[str] = (), host: str = "127.0.0.1", *,
                       health_servicer: health.aio.HealthServicer | None = None,
                       serving: bool = True, reflect: Iterable[str] = (),
                       auth: ServerAuth) -> tuple[grpc.aio.Server, int]:
    """Start an aio gRPC server with the standard health service; return it and its bound port.

    ``auth`` (``ServerAuth.from_settings``, built by the composition root before anything starts)
    decides who may call: a bearer token or a client certificate (mTLS: a TLS port).
    A service that is not ready at start (inference before its models load) passes its own
    ``health_servicer`` and ``serving=False``, and sets SERVING itself once it is."""
    otel = aio_server_interceptor()  # type: ignore[no-untyped-call]
    server = grpc.aio.server(interceptors=[otel, AuthInterceptor(auth), ServerInterceptor()],
                             options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024),
                                      ("grpc.so_reuseport", 0)])
    for add in adders:
        add(server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflect:  # full service names, so grpcurl and Postman can list and call them
        reflection.enable_server_reflection([*reflect, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    creds = auth.server_credentials()
    bound = (server.add_secure_port(f"{host}:{port}", creds) if creds is not None
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise LooplineError(ErrorKind.UNAVAILABLE, f"cannot bind gRPC port {host}:{port}")
    await server.start()
    log.info("gRPC authentication", extra={"auth_mode": auth.mode,
                                           "auth_clients": len(auth.tokens) if auth.tokens is not None else None})
    for name in ["", *health_services]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING if serving
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, bound


# ---- clients ------------------------------------------------------------------------------------


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    metadata = list(details.metadata or ())
    metadata.extend(extra)
    return details._replace(metadata=grpc.aio.Metadata(*metadata))


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
              grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of an aio channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self._metadata), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self._metadata), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_metadata(details, self._metadata), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_metadata(details, self._metadata), request_iterator)


def _channel_credentials(creds: ClientCredentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=creds.tls_ca, private_key=creds.tls_key or None,
                                        certificate_chain=creds.tls_cert or None)


def channel(addr: str, credentials: ClientCredentials | None = None,
            options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """An aio channel to one of the platform's services: the caller's credentials (default: from
    ``LOOPLINE_AUTH_*``) on every call, OpenTelemetry's client spans and trace propagation."""
    creds = credentials if credentials is not None else ClientCredentials.from_env()
    opts = list(options or [])
    interceptors: list[Any] = [*aio_client_interceptors()]  # type: ignore[no-untyped-call]
    if creds.metadata():
        interceptors.append(_Bearer(creds.metadata()))
    if creds.tls:
        if creds.server_name:
            opts.append(("grpc.ssl_target_name_override", creds.server_name))
        return grpc.aio.secure_channel(addr, _channel_credentials(creds), options=opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(addr, options=opts, interceptors=interceptors)


class _SyncDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, extra: tuple[tuple[str, str], ...]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = [*(details.metadata or ()), *extra]
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_SyncDetails(details, self._metadata), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_SyncDetails(details, self._metadata), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(_SyncDetails(details, self._metadata), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(_SyncDetails(details, self._metadata), request_iterator)


def sync_channel(addr: str, credentials: ClientCredentials | None = None) -> grpc.Channel:
    """A blocking channel with the same credentials (scripts and tests outside an event loop)."""
    creds = credentials if credentials is not None else ClientCredentials.from_env()
    if creds.tls:
        opts = [("grpc.ssl_target_name_override", creds.server_name)] if creds.server_name else []
        base = grpc.secure_channel(addr, _channel_credentials(creds), options=opts)
    else:
        base = grpc.insecure_channel(addr)
    return grpc.intercept_channel(base, _SyncBearer(creds.metadata())) if creds.metadata() else base


class _TritonBearer:
    """A tritonclient plugin (``register_plugin``): the bearer token on every call, streams included."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def __call__(self, request: Any) -> None:
        request.headers.update(self._headers)


def with_auth(client: Any, credentials: ClientCredentials | None = None) -> Any:
    """``client`` (Triton's ``InferenceServerClient``, grpc or grpc.aio) sending the caller's bearer token;
    returned for chaining: ``with_auth(InferenceServerClient(addr))``. For mTLS construct the client with
    ``ssl=True`` and the certificate files instead."""
    creds = credentials if credentials is not None else ClientCredentials.from_env()
    if creds.headers():
        client.register_plugin(_TritonBearer(creds.headers()))
    return client

