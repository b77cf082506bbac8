"""gRPC server plumbing: one interceptor maps LooplineError kinds to status codes and continues traces."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context, trace

from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.telemetry import extract_metadata

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("loopline.grpc")

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
    """Wraps unary handlers: continue the caller's trace, map :class:`LooplineError` to a status."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method

        async def wrapped(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            token = context.attach(extract_metadata(ctx.invocation_metadata()))
            try:
                with _tracer.start_as_current_span(method, kind=trace.SpanKind.SERVER):
                    try:
                        return await inner(request, ctx)
                    except LooplineError as exc:
                        # details travel as trailing metadata (x-loopline-<name>), e.g. a CAS loser's current holder
                        trailers = tuple((f"{_DETAIL_PREFIX}{k.replace('_', '-')}", _header_value(v))
                                         for k, v in exc.details.items())
                        await ctx.abort(STATUS[exc.kind], exc.message, trailers)
            finally:
                context.detach(token)

        return grpc.unary_unary_rpc_method_handler(wrapped, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _header_value(value: object) -> str:
    """Metadata values must be printable ASCII."""
    text = str(value).encode("ascii", "backslashreplace").decode()
    return "".join(c if " " <= c <= "~" else " " for c in text)[:1024]


async def start_server(adders: Iterable[Callable[[grpc.aio.Server], None]], port: int,
                       health_services: Iterable[str] = (), host: str = "127.0.0.1", *,
                       health_servicer: health.aio.HealthServicer | None = None,
                       serving: bool = True, reflect: Iterable[str] = ()) -> tuple[grpc.aio.Server, int]:
    """Start an aio gRPC server with the standard health service; return it and its bound port.

    A service that is not ready at start (inference before its models load) passes its own
    ``health_servicer`` and ``serving=False``, and sets SERVING itself once it is."""
    server = grpc.aio.server(interceptors=[ServerInterceptor()],
                             options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024),
                                      ("grpc.so_reuseport", 0)])
    for add in adders:
        add(server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflect:  # full service names, so grpcurl and Postman can list and call them
        reflection.enable_server_reflection([*reflect, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise LooplineError(ErrorKind.UNAVAILABLE, f"cannot bind gRPC port {host}:{port}")
    await server.start()
    for name in ["", *health_services]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING if serving
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, bound
