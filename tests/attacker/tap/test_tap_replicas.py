"""The tap in front of several cloud replicas: it spreads what it forwards, records all of it, and an edge
behind it rides out the replica its health Watch was relayed to stopping (attacker.tap.health_watch)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import wait_for
from replica_helpers import (
    StartReplica,
    address_list,
    replicas_of,
    send_concurrently,
    served_by,
    set_serving,
)
from tap_helpers import start_tap

from attacker.tap.cli import main as tap_main
from attacker.tap.health_watch import REPLICA_STOPPED_DETAILS
from cem.wire import SERVICE_NAME
from cloud_server import health as cloud_health
from cloud_server.health import HealthServicer
from edge_client import ClientSettings, EdgeClient, RetryPolicy


@pytest.fixture
def start_replica(digits_bundle: Path) -> Iterator[StartReplica]:
    yield from replicas_of(digits_bundle)


RUN = 90
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def _features(client: EdgeClient) -> torch.Tensor:
    return client.encode(torch.zeros(1, 1, 32, 32))  # (1, 8, 8, 8)


def test_the_tap_spreads_a_run_over_a_multi_address_upstream_and_records_all_of_it(
    start_replica, digits_bundle: Path, tmp_path: Path
) -> None:
    replicas = [start_replica(), start_replica()]
    tap = start_tap(address_list(replicas), tmp_path / "captures", tmp_path / "tap.log")
    try:
        with EdgeClient(digits_bundle, tap.address, ClientSettings(seed=0)) as client:
            assert send_concurrently(client, _features(client), RUN, threads=4) == []
        counts = served_by(replicas)
        assert min(counts) > 0 and sum(counts) == RUN, counts
        assert tap.terminate()["recorded"] == RUN
    finally:
        tap.kill()


def _stop_the_replica_holding_the_edges_watch(start_replica: StartReplica, bundle: Path, tmp_path: Path) -> list:
    """Edge -> tap -> two replicas, the edge's Watch relayed to ``holder``; ``holder`` stops mid-run. The failures."""
    holder, other = start_replica(grace_s=8.0), start_replica()
    tap = start_tap(address_list([holder, other]), tmp_path / "captures", tmp_path / "tap.log")
    settings = ClientSettings(seed=0, timeout_s=3.0, retry=RetryPolicy(budget_s=3.0))
    try:
        set_serving(other, False)  # so that the edge's Watch, relayed by the tap, can only go to `holder`
        with EdgeClient(bundle, tap.address, settings) as probe:
            features = _features(probe)

            def other_skipped() -> bool:
                before = served_by([other])[0]
                send_concurrently(probe, features, 10, threads=1)
                return served_by([other])[0] == before

            wait_for(other_skipped, 30, "the tap to see the other replica NOT_SERVING")
        with EdgeClient(bundle, tap.address, settings) as client:
            assert send_concurrently(client, features, 4, threads=1) == []  # connected: its Watch is on `holder`
            set_serving(other, True)
            wait_for(lambda: served_by([other])[0] > 0 or send_concurrently(client, features, 4, threads=1), 30,
                     "the tap to send to the other replica again")

            def stop_holder(answered: int) -> None:
                if answered == RUN // 3:
                    holder.stop()  # NOT_SERVING at once; a Watch still open is held until its grace ends

            return send_concurrently(client, features, RUN, threads=4, on_answer=stop_holder)
    finally:
        tap.kill()


def test_an_edge_behind_the_tap_rides_out_the_replica_holding_its_health_watch_stopping(
    start_replica, digits_bundle: Path, tmp_path: Path
) -> None:
    """Before health_watch, the edge took that replica's NOT_SERVING for the whole upstream's and sent nothing
    until the replica's grace period ended (here 8 s, past the edge's 3 s budget): requests failed."""
    assert _stop_the_replica_holding_the_edges_watch(start_replica, digits_bundle, tmp_path) == []


def test_the_edge_rides_it_out_when_its_next_watch_lands_on_the_stopping_replica_again(
    start_replica, digits_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica tells the newest Watch (the edge's, relayed) that it stops 0.5 s before the others (the tap's own
    health check), so the edge's next Watch goes to it again and its first answer is NOT_SERVING. Ending only a
    Watch that had said SERVING (an earlier rule) pinned the edge there again: 12 and 10 requests failed."""
    created: dict[int, int] = {}
    make_watcher = cloud_health._Watcher.__init__

    def numbered(watcher: cloud_health._Watcher, send: cloud_health.SendResponse) -> None:
        make_watcher(watcher, send)
        created[id(watcher)] = len(created)

    def newest_watch_first(servicer: cloud_health.HealthServicer) -> None:
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        with servicer._lock:
            servicer._shutting_down = True
            updates = []
            for service, (version, _) in servicer._status.items():
                servicer._status[service] = (version + 1, not_serving)
                updates += [(watcher, version + 1) for watcher in servicer._watchers.get(service, ())]
        updates.sort(key=lambda update: -created[id(update[0])])
        for n, (watcher, version) in enumerate(updates):
            watcher.update(version, not_serving)
            if n == 0:
                time.sleep(0.5)  # the race, made certain: the others hear it late

    monkeypatch.setattr(cloud_health._Watcher, "__init__", numbered)
    monkeypatch.setattr(cloud_health.HealthServicer, "enter_graceful_shutdown", newest_watch_first)
    assert _stop_the_replica_holding_the_edges_watch(start_replica, digits_bundle, tmp_path) == []


def test_a_relayed_watch_of_the_served_service_ends_once_its_replica_stops_serving(tmp_path: Path) -> None:
    """The edge's Watch (the served service) ends after relaying NOT_SERVING; any other Watch is relayed as is."""
    upstream = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = HealthServicer()  # the cloud's: grpc_health's can deadlock when the tap hangs up (its docstring)
    servicer.set(SERVICE_NAME, SERVING)  # what the tap's own balancer checks
    health_pb2_grpc.add_HealthServicer_to_server(servicer, upstream)
    port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    tap = start_tap(f"127.0.0.1:{port}", tmp_path / "captures", tmp_path / "tap.log")
    try:
        with grpc.insecure_channel(tap.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            other = stub.Watch(health_pb2.HealthCheckRequest(service="probe.Service"), timeout=60)
            assert next(other).status == SERVICE_UNKNOWN
            for status in (SERVING, NOT_SERVING, SERVING):  # relayed as is: the Watch stays open
                servicer.set("probe.Service", status)
                assert next(other).status == status
            served = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=60)
            assert next(served).status == SERVING
            servicer.set(SERVICE_NAME, NOT_SERVING)
            assert next(served).status == NOT_SERVING  # relayed, then the Watch ends so the watcher asks again
            with pytest.raises(grpc.RpcError) as ended:
                next(served)
            assert (ended.value.code(), ended.value.details()) == (grpc.StatusCode.UNAVAILABLE, REPLICA_STOPPED_DETAILS)
            servicer.set("probe.Service", NOT_SERVING)
            assert next(other).status == NOT_SERVING  # the other Watch is still open
            other.cancel()
    finally:
        tap.kill()
        upstream.stop(None)


@pytest.mark.parametrize("upstream", ["cloud", "ipv4:127.0.0.1:50051,cloud:50052", "127.0.0.1:0"])
def test_a_malformed_upstream_is_a_usage_error_before_the_capture_store_is_opened(
    upstream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captures = tmp_path / "captures"
    assert tap_main(["--listen", "127.0.0.1:0", "--upstream", upstream, "--captures", str(captures)]) == 2
    assert "expected --upstream to be a gRPC target (HOST:PORT, dns:" in capsys.readouterr().err
    assert not captures.exists()
