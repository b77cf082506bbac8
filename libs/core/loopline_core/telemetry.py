"""OpenTelemetry tracing with W3C context carried in Kafka headers and gRPC metadata."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

KafkaHeaders = list[tuple[str, bytes]]


def configure_tracing(service: str, exporter: str = "none", endpoint: str = "") -> TracerProvider:
    """Install a tracer provider for ``service``; spans are recorded even with no exporter,
    so trace ids still reach logs and Kafka headers."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":  # pragma: no cover - needs a collector
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        span_exporter = OTLPSpanExporter(endpoint=endpoint or None)
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


def inject_metadata(metadata: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """gRPC client metadata with the current trace context added."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [*metadata, *carrier.items()]


def extract_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> context.Context:
    carrier = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (metadata or [])}
    return propagate.extract(carrier)
