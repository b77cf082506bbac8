"""An OTLP/gRPC trace receiver in the test process: services export to it exactly as they would to an
OpenTelemetry collector (``LOOPLINE_OTEL_EXPORTER=otlp``), and a test reads the spans back."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    links: tuple[tuple[str, str], ...]
    """(trace id, span id) of each linked span."""
    attributes: dict[str, object] = field(hash=False)


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: Receiver) -> None:
        self.sink = sink

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,  # noqa: N802 - the gRPC method
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        got = []
        for rs in request.resource_spans:
            service = next((str(_value(a.value)) for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(SpanRecord(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                          s.kind, tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links),
                                          {a.key: _value(a.value) for a in s.attributes}))
        self.sink.add(got)
        return trace_service_pb2.ExportTraceServiceResponse()


class Receiver:
    """``with Receiver() as r:`` serves OTLP on ``r.endpoint``; ``r.spans()`` is what arrived so far."""

    def __init__(self) -> None:
        self._spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, spans: Iterable[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> Receiver:
        self._server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.stop(1)


class SpanGraph:
    """Spans by id, with what each one's parent and links point to (across services and traces)."""

    def __init__(self, spans: Iterable[SpanRecord]) -> None:
        self.by_id = {s.span_id: s for s in spans}

    def named(self, service: str, prefix: str = "") -> list[SpanRecord]:
        return [s for s in self.by_id.values() if s.service == service and s.name.startswith(prefix)]

    def in_trace(self, trace_id: str) -> list[SpanRecord]:
        return [s for s in self.by_id.values() if s.trace_id == trace_id]

    def linked_from(self, span: SpanRecord) -> list[SpanRecord]:
        """The spans ``span`` links to (that arrived)."""
        return [self.by_id[sid] for _tid, sid in span.links if sid in self.by_id]

    def ancestors(self, span: SpanRecord) -> Iterator[SpanRecord]:
        seen = set()
        while span.parent_id and span.parent_id in self.by_id and span.parent_id not in seen:
            seen.add(span.parent_id)
            span = self.by_id[span.parent_id]
            yield span

    def upstream(self, span: SpanRecord) -> set[str]:
        """Ids of every span reachable from ``span`` by parents and links (what it came from), including
        spans that did not arrive here (a test process's own spans)."""
        out: set[str] = set()
        todo = [span.span_id]
        while todo:
            sid = todo.pop()
            if sid in out:
                continue
            out.add(sid)
            s = self.by_id.get(sid)
            if s is None:
                continue
            if s.parent_id:
                todo.append(s.parent_id)
            todo.extend(lid for _tid, lid in s.links)
        return out
