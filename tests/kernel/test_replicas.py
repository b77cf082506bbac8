"""``loopline run <service> --replicas N``: the pure parts (argument checks, ports, each replica's
environment) and one quick run of the CLI whose replicas cannot start (no stack needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loopline_cli.replicas import DEFAULT_METRICS_PORT, ReplicaError, check, metrics_ports, plan

LOOPLINE = Path(sys.executable).parent / "loopline"


def test_consumer_services_take_any_positive_count() -> None:
    for service in ("ingest", "validator", "trainer"):
        check(service, 1)
        check(service, 8)


@pytest.mark.parametrize(("service", "why"), [("monitor", "one active monitor per model"),
                                              ("retrainer", "would fire once per replica")])
def test_a_single_instance_service_is_refused_more_than_one_replica_and_told_why(service: str, why: str) -> None:
    check(service, 1)
    with pytest.raises(ReplicaError, match=why):
        check(service, 2)


@pytest.mark.parametrize("service", ["registry", "feature", "inference"])
def test_a_grpc_service_is_refused_more_than_one_replica_and_told_where_to_scale_it(service: str) -> None:
    check(service, 1)
    with pytest.raises(ReplicaError) as err:
        check(service, 2)
    message = str(err.value)
    assert f"LOOPLINE_{service.upper()}_PORT" in message
    assert f"--scale {service}=N" in message
    assert "docs/operations/scaling.md" in message


@pytest.mark.parametrize("count", [0, -1])
def test_fewer_than_one_replica_is_refused(count: int) -> None:
    with pytest.raises(ReplicaError, match="at least 1"):
        check("validator", count)


def test_metrics_ports_count_up_from_the_base_or_stay_free() -> None:
    assert metrics_ports(9464, 3) == [9464, 9465, 9466]
    assert metrics_ports(0, 3) == [0, 0, 0]
    assert metrics_ports(65533, 3) == [65533, 65534, 65535]
    with pytest.raises(ReplicaError, match=r"65534\.\.65536"):
        metrics_ports(65534, 3)


def test_each_replica_gets_its_index_and_port_and_keeps_everything_else() -> None:
    env = {"LOOPLINE_KAFKA_BOOTSTRAP": "k:9092", "LOOPLINE_METRICS_PORT": "9500", "PATH": "/bin"}
    envs = plan("validator", 3, env)
    assert [e["LOOPLINE_REPLICA"] for e in envs] == ["0", "1", "2"]
    assert [e["LOOPLINE_METRICS_PORT"] for e in envs] == ["9500", "9501", "9502"]
    assert all(e["LOOPLINE_KAFKA_BOOTSTRAP"] == "k:9092" and e["PATH"] == "/bin" for e in envs)
    assert env["LOOPLINE_METRICS_PORT"] == "9500"  # the caller's mapping is left as it was


def test_the_metrics_port_defaults_like_the_services_and_a_bad_one_is_named() -> None:
    assert [e["LOOPLINE_METRICS_PORT"] for e in plan("ingest", 2, {})] == [str(DEFAULT_METRICS_PORT),
                                                                           str(DEFAULT_METRICS_PORT + 1)]
    assert [e["LOOPLINE_METRICS_PORT"] for e in plan("ingest", 2, {"LOOPLINE_METRICS_PORT": "0"})] == ["0", "0"]
    with pytest.raises(ReplicaError, match="LOOPLINE_METRICS_PORT: not a port number"):
        plan("ingest", 2, {"LOOPLINE_METRICS_PORT": "http"})


def test_the_cli_refuses_before_starting_anything() -> None:
    out = subprocess.run([str(LOOPLINE), "run", "feature", "--replicas", "2"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 1
    assert "feature serves gRPC on one fixed port" in out.stderr
    assert "replicas:" not in out.stderr


def test_replicas_that_die_are_not_restarted_and_the_cli_exits_non_zero(tmp_path: Path) -> None:
    # No LOOPLINE_KAFKA_BOOTSTRAP: every replica stops at start with its one-line settings error.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    env["LOOPLINE_METRICS_PORT"] = "0"
    out = subprocess.run([str(LOOPLINE), "run", "validator", "--replicas", "2"], capture_output=True, text=True,
                         timeout=120, check=False, env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "validator: 2 replicas:" in out.stderr
    assert out.stderr.count("LOOPLINE_KAFKA_BOOTSTRAP is required") == 2
    assert "exited on its own with status 1" in out.stderr
    assert "every replica drained and stopped" not in out.stderr
