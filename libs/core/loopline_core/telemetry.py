"""OpenTelemetry tracing with W3C context carried in Kafka headers and gRPC metadata."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

KafkaHeaders = list[tuple[str, bytes]]


MAX_LINKS = 1024
"""A consumer's batch span links every distinct producer context of its batch (up to ``max_records``);
the SDK's default of 128 would drop most of a 500-record batch's."""


def configure_tracing(service: str, exporter: str = "none", endpoint: str = "",
                      sample_ratio: float = 1.0) -> TracerProvider:
    """Install a tracer provider for ``service``; spans are recorded even with no exporter,
    so trace ids still reach logs and Kafka headers.

    New traces are sampled at ``sample_ratio``; a record or call that arrives with a trace keeps its
    caller's decision (parent-based), so one trace is whole or absent, never half."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
                              span_limits=SpanLimits(max_links=MAX_LINKS))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        # an http:// collector (the compose file's, a test's) is plaintext; https:// uses TLS
        span_exporter = OTLPSpanExporter(endpoint=endpoint or None, insecure=endpoint.startswith("http://"))
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """Return Kafka headers with the current trace context (``traceparent``) added."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = [(k, v) for k, v in (headers or []) if k not in carrier]
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_headers(headers: Iterable[tuple[str, bytes]] | None) -> context.Context:
    """The trace context a producer put in a record's headers (an empty one if none)."""
    carrier = {k: v.decode("latin-1") for k, v in (headers or [])}
    return propagate.extract(carrier)


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span ("" outside one): what a record produced later, off
    the caller's task (a batched log), carries to continue the caller's trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def inject_metadata(metadata: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """gRPC client metadata with the current trace context added."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [*metadata, *carrier.items()]
