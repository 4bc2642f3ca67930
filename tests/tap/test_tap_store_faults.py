"""When the capture store fails: fail open or closed by flag, visible in health and metrics; the loss bounds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tap_helpers import make_request, start_tap

from cem.captures.reader import CaptureStore
from attacker.tap.recorder import CaptureRecorder, RecorderConfig
from cem.captures.store import SHARD_DIR, CaptureWriter
from cem.durable import TMP_PREFIX
from protos import cem_split_pb2_grpc as pb_grpc

INFER = "/cem.split.v1.SplitInference/Infer"


def unusable_directory(tmp_path: Path) -> Path:
    """A capture path that cannot be created: its parent is a regular file (read-only for root too)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the capture directory's parent should be")
    return blocker / "captures"


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
    deadline = time.monotonic() + 10
    while CaptureStore(tmp_path / "captures").summary().requests < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    shards.rename(tmp_path / "shards-away")
    shards.write_text("not a directory any more")  # the next shard write fails
    stub.Infer(make_request(model_id, "lost", x), timeout=10)  # answered; its capture cannot be written
    deadline = time.monotonic() + 10
    while tap_health(channel, "cem.tap") != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "the failed write never showed in the tap's health"
        time.sleep(0.02)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Infer(make_request(model_id, "refused", x), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot record" in caught.value.details()
    assert tap_health(channel, "") == health_pb2.HealthCheckResponse.SERVING  # the cloud itself is fine
    shards.unlink()
    (tmp_path / "shards-away").rename(shards)  # the operator fixes the disk; the probe notices within 5 s
    deadline = time.monotonic() + 20
    while tap_health(channel, "cem.tap") != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "the tap never noticed the store was writable again"
        time.sleep(0.1)
    stub.Infer(make_request(model_id, "after", x), timeout=10)
    metrics = scrape(proxy.metrics_address)
    stats = proxy.terminate()
    assert (stats["recorded"], stats["dropped_write_failed"], stats["refused"]) == (2, 1, 1)
    assert metrics["cem_tap_refused_total"] == 1 and metrics["cem_tap_capturing"] == 1
    assert CaptureStore(tmp_path / "captures").summary().requests == 2


def test_the_recorder_opens_a_directory_that_becomes_usable(tmp_path: Path) -> None:
    captures = unusable_directory(tmp_path)
    recorder = CaptureRecorder(captures, RecorderConfig(flush_interval_s=0.01, reopen_interval_s=0.05))
    assert not recorder.capturing
    captures.parent.unlink()  # the operator fixes the mount
    deadline = time.monotonic() + 10
    while not recorder.capturing:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    recorder.close()
    assert (captures / SHARD_DIR).is_dir()


def test_answered_requests_are_durable_within_the_flush_interval_of_a_kill(tap, channels, model_id: str,
                                                                          tmp_path: Path) -> None:
    """Issue 10 item 8 (state the bound): at kill -9 the tap loses at most what it had not yet written, i.e.
    requests answered in the last flush interval plus one shard write (never more than max_queue +
    batch_records). Requests answered longer ago than that are all on disk."""
    proxy = tap("--flush-interval", "0.25", "--batch-records", "64")
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    for i in range(40):
        stub.Infer(make_request(model_id, f"r{i}", torch.rand(2, 8, 8, 8)), timeout=10)
    time.sleep(0.25 + 1.0)  # the flush interval, plus a generous shard write on a busy machine
    proxy.kill()
    assert CaptureStore(tmp_path / "captures").summary().requests == 40


def test_a_full_disk_leaves_no_partial_shard(tmp_path: Path) -> None:
    """Issue 10 item 8: a full disk left partial ``.tmp-`` files. RLIMIT_FSIZE makes writes past 64 KiB fail
    with EFBIG, a real write error on real files, in a child process so the test runner is unaffected."""
    script = textwrap.dedent(f"""
        import resource, signal
        import torch
        from cem.captures.records import CaptureRecord
        from cem.captures.store import CaptureWriter
        writer = CaptureWriter({str(tmp_path)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        record = CaptureRecord(0.0, "/m", "model", "r", "float32", (1, 2), 0.0, 0.0, (), bytes(256 * 1024))
        try:
            writer.append([record])
        except OSError as exc:
            print("write failed:", exc.strerror)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "write failed: File too large" in result.stdout, result.stderr
    assert not list((tmp_path / SHARD_DIR).glob(TMP_PREFIX + "*"))
    CaptureWriter(tmp_path).close()
    assert CaptureStore(tmp_path).verify() == 0
