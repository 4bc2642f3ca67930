"""The edge against several cloud replicas behind one target: round robin, health checking, failover.

Real servers on loopback, each counting what it served on its own /metrics
(replica_helpers). Nothing here is timed: the runs act at a point of the
run (after the n-th answer), and waits only bound a hang.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from polling import wait_for
from replica_helpers import (
    StartReplica,
    address_list,
    replicas_of,
    send_concurrently,
    served,
    served_by,
    set_serving,
)

from cem.processes import ServiceProcess
from edge_client import ClientSettings, EdgeClient
from edge_client.cli import main as edge_main


@pytest.fixture
def start_replica(digits_bundle: Path) -> Iterator[StartReplica]:
    yield from replicas_of(digits_bundle)


RUN = 120  # requests in a run; 4 sender threads
AFTER = 30  # requests sent once a replica is gone or NOT_SERVING


def _features(client: EdgeClient) -> torch.Tensor:
    return client.encode(torch.zeros(1, 1, 32, 32))  # (1, 8, 8, 8)


def _send(client: EdgeClient, features: torch.Tensor, requests: int) -> None:
    for _ in range(requests):
        client.infer_features(features)


def test_two_replicas_share_a_run_and_one_stopped_mid_run_loses_no_request(start_replica, digits_bundle: Path) -> None:
    replicas = [start_replica(grace_s=2.0), start_replica(grace_s=2.0)]
    at_stop: list[list[int]] = []

    def stop_first_replica(answered: int) -> None:
        if answered == RUN // 3:
            at_stop.append(served_by(replicas))
            replicas[0].stop()  # SIGTERM's path: NOT_SERVING, drain, close the port

    with EdgeClient(digits_bundle, address_list(replicas), ClientSettings(seed=0)) as client:
        features = _features(client)
        failures = send_concurrently(client, features, RUN, threads=4, on_answer=stop_first_replica)
        assert failures == []  # every request of the run was answered
        assert at_stop and min(at_stop[0]) > 0, at_stop  # both replicas served part of the run before the stop
        assert replicas[0].wait_for_termination(30)
        before = served(replicas[1].metrics_port)
        _send(client, features, AFTER)
        assert served(replicas[1].metrics_port) == before + AFTER  # the stopped replica is out of the rotation


def test_a_replica_killed_mid_run_loses_no_request(start_replica, digits_bundle: Path, tmp_path: Path) -> None:
    """SIGKILL: calls in flight on the dead replica fail with UNAVAILABLE, which the edge retries on the other."""
    survivor = start_replica()
    argv = [sys.executable, "-m", "cloud_server.cli", "--bundle", str(digits_bundle), "--port", "0",
            "--device", "cpu", "--threads", "1", "--max-delay-ms", "1", "--metrics-listen", "127.0.0.1:0"]
    with ServiceProcess.start(argv, log_path=tmp_path / "victim.log", name="cem-cloud") as victim:
        metrics = next(line for line in victim.stdout_lines() if line.startswith("METRICS "))
        victim_metrics_port = int(metrics.rsplit(":", 1)[1])
        before_kill: list[int] = []

        def kill_victim(answered: int) -> None:
            if answered == RUN // 3:
                before_kill.append(served(victim_metrics_port))
                victim.kill()

        target = f"ipv4:127.0.0.1:{victim.port},127.0.0.1:{survivor.port}"
        with EdgeClient(digits_bundle, target, ClientSettings(seed=0)) as client:
            features = _features(client)
            failures = send_concurrently(client, features, RUN, threads=4, on_answer=kill_victim)
            assert failures == []
            assert before_kill and before_kill[0] > 0 and served_by([survivor])[0] > 0
            assert not victim.running
            before = served_by([survivor])[0]
            _send(client, features, AFTER)
            assert served_by([survivor])[0] == before + AFTER


def test_a_replica_reporting_not_serving_gets_no_requests_until_it_serves_again(
    start_replica, digits_bundle: Path
) -> None:
    """Client-side health checking (``cem.targets.balancing_options``), over an ``ipv6:`` list of replicas."""
    replicas = [start_replica(host="[::1]"), start_replica(host="[::1]")]
    with EdgeClient(digits_bundle, address_list(replicas, host="::1"), ClientSettings(seed=0)) as client:
        features = _features(client)

        def first_skipped(skipped: bool) -> bool:
            before = served_by(replicas)[0]
            _send(client, features, 10)  # round robin: 5 of them go to the first replica while it is healthy
            return (served_by(replicas)[0] == before) == skipped

        wait_for(lambda: min(served_by(replicas)) > 0 or _send(client, features, 4), 30, "both replicas to serve")
        set_serving(replicas[0], False)
        wait_for(lambda: first_skipped(True), 30, "the edge to see the replica NOT_SERVING")
        before = served_by(replicas)
        _send(client, features, AFTER)
        assert served_by(replicas) == [before[0], before[1] + AFTER]
        set_serving(replicas[0], True)
        wait_for(lambda: first_skipped(False), 30, "the edge to send to the replica again")


def _grpc_resolves_localhost_to(host: str) -> bool:
    """Whether gRPC's own resolver (c-ares, not the system's getaddrinfo) gives ``localhost`` the address ``host``:
    a bare health server there answers a channel to ``dns:///localhost``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    try:
        with grpc.insecure_channel(f"dns:///localhost:{port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return True
    except grpc.RpcError:
        return False
    finally:
        server.stop(None)


def test_a_dns_name_with_two_addresses_is_two_replicas(start_replica, digits_bundle: Path) -> None:
    """What the compose demo relies on: one name, an address per replica (there, Docker's DNS; here, localhost)."""
    if not all(_grpc_resolves_localhost_to(host) for host in ("127.0.0.1", "[::1]")):
        pytest.skip("gRPC does not resolve localhost to both 127.0.0.1 and ::1 here")
    first = start_replica(host="127.0.0.1")
    second = start_replica(host="[::1]", port=first.port)
    with EdgeClient(digits_bundle, f"dns:///localhost:{first.port}", ClientSettings(seed=0)) as client:
        features = _features(client)
        wait_for(lambda: min(served_by([first, second])) > 0 or _send(client, features, 4), 30,
                 "both addresses of the name to serve")


@pytest.mark.parametrize(("server", "message"), [
    ("cloud", "expected --server to be a gRPC target (HOST:PORT, dns:"),
    ("ipv4:127.0.0.1:50051,localhost:50052", "'localhost' is no IPv4 address"),
    ("http://cloud:50051", "'http' is not a gRPC scheme"),
    ("::1:50051", "an IPv6 host goes in brackets"),
])
def test_a_malformed_server_is_a_usage_error_before_anything_loads(
    server: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-bundle"  # never read: the target is checked first
    assert edge_main(["classify", "--server", server, "--bundle", str(missing), "x.png"]) == 2
    assert message in capsys.readouterr().err


def test_tls_to_a_list_of_addresses_needs_the_server_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gRPC has no single host name to check the replicas' certificate against (it refuses every handshake)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read before the check")
    argv = ["classify", "--server", "ipv4:127.0.0.1:50051,127.0.0.1:50052", "--bundle", str(tmp_path / "no-bundle"),
            "--tls-root-cert", str(ca), "x.png"]
    assert edge_main(argv) == 2
    assert "expected a TLS server name (--tls-server-name" in capsys.readouterr().err
    assert edge_main([*argv, "--tls-server-name", "cloud.internal"]) == 2  # gets past the check, to the bundle
    assert "bundle" in capsys.readouterr().err.lower()
