"""``cloud_server.health``: the health service answers as grpc_health does, and a Watch that hangs up while the
server changes its health no longer deadlocks the server (grpc_health's did, 20 of 20 tries)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cem.wire import SERVICE_NAME
from cloud_server.health import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCHERS = 6


def _watch_until_not_serving(channel: grpc.Channel, watching: threading.Barrier) -> None:
    """Watch the served service; once SERVING, meet the others at ``watching``; hang up on the first other status."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert next(call).status == SERVING
    watching.wait(30)
    for response in call:
        if response.status != SERVING:
            call.cancel()  # while the server may still be sending to the others
            return


@pytest.fixture
def served() -> Iterator[tuple[HealthServicer, str]]:
    """The servicer alone on a real grpcio server on 127.0.0.1 (the cloud's own thread pool size)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_check_and_watch_answer_as_grpc_health_does(served: tuple[HealthServicer, str]) -> None:
    servicer, address = served
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING  # "" serves from the start
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30)
        assert next(watch).status == SERVICE_UNKNOWN
        for status in (NOT_SERVING, SERVING, SERVING):  # a repeated status is sent again, as grpc_health does
            servicer.set(SERVICE_NAME, status)
            assert next(watch).status == status
        servicer.enter_graceful_shutdown()
        assert next(watch).status == NOT_SERVING
        servicer.set(SERVICE_NAME, SERVING)  # ignored from now on
        assert stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10).status == NOT_SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
        watch.cancel()


def test_watches_hanging_up_on_not_serving_do_not_deadlock_the_server(served: tuple[HealthServicer, str]) -> None:
    """What the tap does with a Watch it relayed (attacker.tap.health_watch): six at once, five rounds."""
    servicer, address = served
    for _ in range(5):
        servicer.set(SERVICE_NAME, SERVING)
        watching = threading.Barrier(WATCHERS + 1)
        channels = [grpc.insecure_channel(address) for _ in range(WATCHERS)]

        threads = [threading.Thread(target=_watch_until_not_serving, args=(channel, watching), daemon=True)
                   for channel in channels]
        for thread in threads:
            thread.start()
        watching.wait(30)
        setter = threading.Thread(target=lambda: [servicer.set(SERVICE_NAME, status)
                                                  for status in (NOT_SERVING, SERVING, NOT_SERVING)], daemon=True)
        setter.start()
        setter.join(60)  # bounds a deadlock; grpc_health's servicer never returned here
        assert not setter.is_alive(), "set() deadlocked against Watches hanging up"
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        for channel in channels:
            channel.close()
    with grpc.insecure_channel(address) as channel:  # and the server still answers
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                          timeout=10)
        assert check.status == NOT_SERVING


def test_a_cloud_stops_while_its_watchers_hang_up(start_server) -> None:
    """The cloud's SIGTERM path (NOT_SERVING to every Watch, then close) with watchers that hang up at once."""
    server = start_server(grace_s=1.0)
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(WATCHERS)]
    watching = threading.Barrier(WATCHERS + 1)
    threads = [threading.Thread(target=_watch_until_not_serving, args=(channel, watching), daemon=True)
               for channel in channels]
    for thread in threads:
        thread.start()
    try:
        watching.wait(30)
        assert server.stop().wait(60), "the cloud's shutdown hung"
    finally:
        for channel in channels:
            channel.close()
