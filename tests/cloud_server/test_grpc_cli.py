"""cem-cloud and cem-edge as real processes: the LISTENING line, eval/classify output, refusals, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_helpers import NOT_SERVING, SERVING, health_status, open_stub
from PIL import Image
from polling import wait_for

from cem.codec import encode_tensor
from cem.data import load_dataset
from cem.processes import ServiceProcess
from protos import cem_split_pb2 as pb

pytestmark = pytest.mark.e2e  # cem-cloud and cem-edge as processes, end to end

BIN = Path(sys.executable).parent
EVAL_KEYS = {"accuracy", "images", "throughput_ips", "latency_ms_p50", "latency_ms_p99", "bytes_per_image"}


def start_cloud(bundle: Path, log: Path, *extra: str) -> ServiceProcess:
    """``cem-cloud`` on port 0; its ``port`` comes from its LISTENING line."""
    return ServiceProcess.start([BIN / "cem-cloud", "--bundle", bundle, "--port", "0", "--device", "cpu", *extra],
                                log_path=log, timeout_s=90)


@pytest.fixture
def cloud(digits_bundle: Path, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = start_cloud(digits_bundle, tmp_path / "cloud.log")
    yield process
    process.kill()


def _edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cem-edge"), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_edge_eval_and_classify_against_cem_cloud(cloud: ServiceProcess, digits_bundle: Path, tmp_path: Path) -> None:
    server = f"127.0.0.1:{cloud.port}"
    result = _edge("eval", "--server", server, "--bundle", str(digits_bundle), "--dataset", "digits",
                   "--wire-dtype", "float16", "--batch-size", "64", "--limit", "200", "--sample-ids", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= EVAL_KEYS and report["images"] == 200 and report["wire_dtype"] == "float16"
    assert 0.5 < report["accuracy"] <= 1 and report["throughput_ips"] > 0
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p99"]
    assert 8 * 8 * 8 * 2 < report["bytes_per_image"] < 8 * 8 * 8 * 4  # float16 features plus ids and framing

    test, _ = load_dataset("digits", split="test")
    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((test[i][0][0].numpy() * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    result = _edge("classify", "--server", server, "--bundle", str(digits_bundle), *paths, "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["image"] for r in output["results"]] == paths
    for r in output["results"]:
        probabilities = [t["probability"] for t in r["top"]]
        assert len(r["top"]) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6
    assert result.stdout.splitlines()[0].startswith(f"{paths[0]}: ")


def test_tampered_bundles_are_refused_by_both_processes_as_usage_errors(bundle_copy: Path) -> None:
    for part in ("encoder", "decoder"):
        path = bundle_copy / f"{part}.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    cloud = subprocess.run([str(BIN / "cem-cloud"), "--bundle", str(bundle_copy), "--port", "0"],
                           capture_output=True, text=True, timeout=120)
    assert cloud.returncode == 2 and "decoder.safetensors failed verification" in cloud.stderr
    assert "LISTENING" not in cloud.stdout
    edge = _edge("classify", "--server", "127.0.0.1:1", "--bundle", str(bundle_copy), "x.png")
    assert edge.returncode == 2 and "encoder.safetensors failed verification" in edge.stderr
    assert "Traceback" not in cloud.stderr + edge.stderr


def _unless_serving(status: int) -> int | None:
    return None if status == SERVING else status


def test_sigterm_during_load_finishes_every_in_flight_request(digits_bundle: Path, tmp_path: Path) -> None:
    cloud = start_cloud(digits_bundle, tmp_path / "cloud.log", "--max-batch", "256", "--max-delay-ms", "1",
                        "--drain-s", "1")
    channel, stub = open_stub(cloud.port)
    requests = 16
    outcomes: list[grpc.StatusCode] = []
    first_done = threading.Event()
    barrier = threading.Barrier(requests)

    def send(index: int) -> None:
        features = torch.rand(256, 8, 8, 8, generator=torch.Generator().manual_seed(index))
        request = pb.InferRequest(request_id=str(index), features=encode_tensor(features))
        barrier.wait()
        try:
            response = stub.Infer(request, timeout=120)
            code = grpc.StatusCode.OK if len(response.predictions) == 256 else grpc.StatusCode.DATA_LOSS
        except grpc.RpcError as exc:
            code = exc.code()
        outcomes.append(code)
        first_done.set()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(requests)]
    try:
        for thread in threads:
            thread.start()
        assert first_done.wait(120)
        answered_before_sigterm = len(outcomes)
        cloud.send_signal(signal.SIGTERM)
        # health turns NOT_SERVING at SIGTERM and the port stays open through the 1 s drain: poll, not sleep
        health_during_drain = wait_for(lambda: _unless_serving(health_status(channel)), 60,
                                       "health to leave SERVING after SIGTERM", interval_s=0.02)
        for thread in threads:
            thread.join(120)
        assert cloud.wait(60) == 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.Infer(pb.InferRequest(features=encode_tensor(torch.rand(1, 8, 8, 8))), timeout=10)
    finally:
        channel.close()
        cloud.kill()
    assert health_during_drain == NOT_SERVING
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert outcomes == [grpc.StatusCode.OK] * requests
    assert answered_before_sigterm < requests, "no request was in flight at SIGTERM"
    log = cloud.log_text()
    assert "received SIGTERM" in log and "server stopped" in log
