"""Several real cloud replicas on loopback, what each one served, and a run of requests from many threads.

Imported by name by the replicated-cloud tests (tests/edge_client/test_edge_replicas.py,
tests/attacker/tap/test_tap_replicas.py). What a replica served is read from its
own Prometheus endpoint (``cem_cloud_requests_total``, ``cloud_server.metrics``),
so the tests see the servers' counts, not the client's idea of them.
"""

from __future__ import annotations

import faulthandler
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import serving_clouds

from cem.wire import SERVICE_NAME
from cloud_server import CloudServer
from edge_client import EdgeClient, RemoteCallError

StartReplica = Callable[..., CloudServer]


def replicas_of(digits_bundle: Path) -> Iterator[StartReplica]:
    """The body of a ``start_replica`` fixture (a test file yields from it):
    ``start_replica(host="127.0.0.1", port=0, **settings)`` is an in-process cloud with a metrics endpoint,
    SERVING when returned; every one is stopped at teardown."""
    yield from serving_clouds(digits_bundle, max_delay_ms=1, metrics_listen="127.0.0.1:0")


def address_list(servers: list[CloudServer], host: str = "127.0.0.1") -> str:
    """An ``ipv4:`` (or, for an IPv6 ``host``, ``ipv6:``) target naming every server."""
    if ":" in host:
        return "ipv6:" + ",".join(f"[{host}]:{server.port}" for server in servers)
    return "ipv4:" + ",".join(f"{host}:{server.port}" for server in servers)


def served(metrics_port: int, method: str = "Infer") -> int:
    """Requests of ``method`` a replica answered OK, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(sum(
        sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "cem_cloud_requests_total" and sample.labels == {"method": method, "code": "OK"}
    ))


def served_by(servers: list[CloudServer]) -> list[int]:
    """``served`` of each in-process replica, in order."""
    ports = [server.metrics_port for server in servers]
    assert all(port is not None for port in ports), "a replica was started without metrics_listen"
    return [served(port) for port in ports if port is not None]


def set_serving(server: CloudServer, serving: bool) -> None:
    """Turn a running replica's health NOT_SERVING (or back), as a balancer sees it, without stopping it.

    CloudServer has no public switch (only ``stop()``, which also closes the port), so
    this reaches its health servicer, setting both names it serves as the server does.
    """
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        server._health.set(name, status)


def send_concurrently(client: EdgeClient, features: torch.Tensor, requests: int, threads: int,
                      on_answer: Callable[[int], None] | None = None) -> list[RemoteCallError]:
    """``requests`` unary calls of ``features`` from ``threads`` threads sharing ``client``; the failures.

    ``on_answer(n)`` runs on the sending thread after the ``n``-th answer (1-based,
    each ``n`` once), so a test can act at a point of the run, not at a time.
    """
    lock = threading.Lock()
    issued = answered = 0
    failures: list[RemoteCallError] = []

    def send() -> None:
        nonlocal issued, answered
        while True:
            with lock:
                if issued == requests:
                    return
                issued += 1
            try:
                client.infer_features(features)
            except RemoteCallError as exc:
                with lock:
                    failures.append(exc)
                continue
            with lock:
                answered += 1
                n = answered
            if on_answer is not None:
                on_answer(n)

    workers = [threading.Thread(target=send, name=f"sender-{i}", daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    if any(worker.is_alive() for worker in workers):
        faulthandler.dump_traceback(sys.stderr)  # where it hangs, for the report
        raise AssertionError("a sender thread hung")
    return failures
