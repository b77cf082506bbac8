"""Prometheus endpoint with health probes, and the kernel's own metrics (each service adds its own
in its metrics.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

BUS_CONSUMED = Counter("loopline_bus_consumed_total", "Records handled", ["topic", "outcome"])
BUS_DEAD_LETTERED = Counter("loopline_bus_dead_lettered_total",
                            "Records sent to a dead-letter topic, by reason: the dead letter's kind (an error "
                            "kind such as INVALID_ARGUMENT or FAILED_PRECONDITION, or exhausted)", ["topic", "reason"])
BUS_EXHAUSTED = Counter("loopline_bus_exhausted_total",
                        "Records dead-lettered because transient failures outlasted the retry budget", ["topic"])
BUS_BATCH_SECONDS = Histogram("loopline_bus_batch_seconds", "Time to handle one consumed batch", ["topic"])
BUS_LAG = Gauge("loopline_bus_lag", "Records of a partition not yet consumed: its high watermark minus the "
                "consumer's position, per consumer group, topic and assigned partition",
                ["group", "topic", "partition"])
BUS_ASSIGNED = Gauge("loopline_bus_assigned", "1 once a subscription's consumer has joined its group and received "
                     "an assignment (possibly empty: a standby replica), 0 while it joins or rejoins",
                     ["subscription"])
READY = Gauge("loopline_ready", "1 while the service is ready (its dependencies answer), else 0")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_metrics_server(port: int = 0, host: str = "127.0.0.1",
                         ready: Callable[[], bool] = lambda: True) -> int:
    """Serve ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (``ready()``) on ``port``
    (a free one if 0) in a daemon thread; return the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                READY.set(1 if ready() else 0)  # current at every scrape, not only when a probe asked
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ok = ready()
                READY.set(1 if ok else 0)
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would drown the service's own log."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    chosen: int = server.server_address[1]
    return chosen
