"""When the capture store fails: fail open or closed by flag, visible in health and metrics; the loss bounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import wait_for
from tap_helpers import make_request, start_tap, unusable_directory

from cem.captures.reader import CaptureStore
from cem.captures.store import SHARD_DIR
from protos import cem_split_pb2_grpc as pb_grpc

INFER = "/cem.split.v1.SplitInference/Infer"


def tap_health(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def scrape(metrics_address: str) -> dict[str, float]:
    text = httpx.get(f"http://{metrics_address}/metrics", timeout=10).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("cem_tap_") and not line.startswith("#")}


def test_unusable_directory_fails_open_by_default_and_says_so(cloud_address: str, channels, model_id: str,
                                                             tmp_path: Path) -> None:
    """Issue 10 item 8: the tap refused to start on a read-only capture directory, which stopped inference."""
    proxy = start_tap(cloud_address, unusable_directory(tmp_path), tmp_path / "tap.log",
                      "--metrics-listen", "127.0.0.1:0")
    try:
        channel = channels(proxy.address)
        stub = pb_grpc.SplitInferenceStub(channel)
        for i in range(3):
            assert len(stub.Infer(make_request(model_id, f"r{i}", torch.rand(2, 8, 8, 8)), timeout=10).predictions) == 2
        assert tap_health(channel, "cem.tap") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert tap_health(channel, "") == health_pb2.HealthCheckResponse.SERVING  # the cloud's own health, relayed
        metrics = scrape(proxy.metrics_address)
        assert metrics["cem_tap_capturing"] == 0 and metrics["cem_tap_offered_total"] == 3
        stats = proxy.terminate()
    finally:
        proxy.kill()
    assert (stats["recorded"], stats["dropped_write_failed"]) == (0, 3)
    assert "forwarding traffic WITHOUT capturing it" in proxy.log()


def test_refuse_mode_will_not_start_on_an_unusable_directory(cloud_address: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "attacker.tap.cli", "--listen", "127.0.0.1:0", "--upstream", cloud_address,
         "--captures", str(unusable_directory(tmp_path)), "--on-store-failure", "refuse"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "cannot open the capture directory" in result.stderr and "LISTENING" not in result.stdout


def test_refuse_mode_refuses_calls_while_the_store_fails_and_recovers(tap, channels, model_id: str,
                                                                    tmp_path: Path) -> None:
    proxy = tap("--on-store-failure", "refuse", "--flush-interval", "0.02", "--metrics-listen", "127.0.0.1:0")
    channel = channels(proxy.address)
    stub = pb_grpc.SplitInferenceStub(channel)
    x = torch.rand(2, 8, 8, 8)
    stub.Infer(make_request(model_id, "before", x), timeout=10)
    assert tap_health(channel, "cem.tap") == health_pb2.HealthCheckResponse.SERVING
    shards = tmp_path / "captures" / SHARD_DIR
    wait_for(lambda: CaptureStore(tmp_path / "captures").summary().requests == 1, 30, "the first capture on disk")
    shards.rename(tmp_path / "shards-away")
    shards.write_text("not a directory any more")  # the next shard write fails
    stub.Infer(make_request(model_id, "lost", x), timeout=10)  # answered; its capture cannot be written
    wait_for(lambda: tap_health(channel, "cem.tap") == health_pb2.HealthCheckResponse.NOT_SERVING, 30,
             "the failed write to show in the tap's health")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Infer(make_request(model_id, "refused", x), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot record" in caught.value.details()
    assert tap_health(channel, "") == health_pb2.HealthCheckResponse.SERVING  # the cloud itself is fine
    shards.unlink()
    (tmp_path / "shards-away").rename(shards)  # the operator fixes the disk; the probe notices within 5 s
    wait_for(lambda: tap_health(channel, "cem.tap") == health_pb2.HealthCheckResponse.SERVING, 60,
             "the tap to notice the store is writable again", interval_s=0.1)
    stub.Infer(make_request(model_id, "after", x), timeout=10)
    metrics = scrape(proxy.metrics_address)
    stats = proxy.terminate()
    assert (stats["recorded"], stats["dropped_write_failed"], stats["refused"]) == (2, 1, 1)
    assert metrics["cem_tap_refused_total"] == 1 and metrics["cem_tap_capturing"] == 1
    assert CaptureStore(tmp_path / "captures").summary().requests == 2


def test_answered_requests_reach_the_disk_on_the_flush_timer_and_survive_a_kill(tap, channels, model_id: str,
                                                                               tmp_path: Path) -> None:
    """Issue 10 item 8 (the loss bound): at kill -9 the tap loses at most what it had not yet written, i.e.
    requests answered in the last flush interval plus one shard write (never more than max_queue +
    batch_records). 40 requests are fewer than a batch (64) and no more traffic comes, so only the flush
    timer can write them; once it has, a SIGKILL costs none of them. (The interval itself is not timed here:
    on a shared machine a shard write has no upper bound worth asserting.)"""
    proxy = tap("--flush-interval", "0.25", "--batch-records", "64")
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    for i in range(40):
        stub.Infer(make_request(model_id, f"r{i}", torch.rand(2, 8, 8, 8)), timeout=10)
    store = CaptureStore(tmp_path / "captures")
    wait_for(lambda: store.summary().requests == 40, 60, "the flush timer to write the 40 answered requests")
    assert proxy.process.running  # written by the timer, not by a shutdown
    proxy.kill()
    assert store.verify() == 40 and store.summary().requests == 40

