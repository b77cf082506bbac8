"""Prometheus endpoint and the kernel's own metrics (every service adds its own in its metrics.py)."""

from __future__ import annotations

import socket

from prometheus_client import Counter, Histogram, start_http_server

BUS_CONSUMED = Counter("loopline_bus_consumed_total", "Records handled", ["topic", "outcome"])
BUS_DEAD_LETTERED = Counter("loopline_bus_dead_lettered_total", "Records sent to a dead-letter topic", ["topic"])
BUS_HANDLE_SECONDS = Histogram("loopline_bus_handle_seconds", "Time to handle one record", ["topic"])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_metrics_server(port: int = 0, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``port`` (a free one if 0) and return the port."""
    chosen = port or free_port(host)
    start_http_server(chosen, addr=host)
    return chosen
