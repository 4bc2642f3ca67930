"""The capture store survives a SIGKILL of the tap mid-stream, and a failing disk never costs traffic."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import torch
from polling import wait_for
from tap_helpers import make_request

from cem.captures.reader import CaptureStore
from cem.captures.store import SHARD_DIR, CaptureWriter
from cem.durable import TMP_PREFIX
from protos import cem_split_pb2_grpc as pb_grpc


def test_store_consistent_after_sigkill_mid_stream(tap, channels, model_id: str, tmp_path: Path) -> None:
    proxy = tap("--batch-records", "4", "--flush-interval", "0.02")
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    generator = torch.Generator().manual_seed(7)
    sent: list[str] = []
    answered = threading.Semaphore(0)
    outcome: list[BaseException] = []

    def requests():
        for i in range(100_000):
            sent.append(f"r{i}")
            yield make_request(model_id, f"r{i}", torch.rand((2, 8, 8, 8), generator=generator),
                               sample_ids=[f"digits/test/{2 * i}", f"digits/test/{2 * i + 1}"])
            time.sleep(0.002)

    def stream() -> None:
        try:
            for _ in stub.InferStream(requests(), timeout=60):
                answered.release()
        except grpc.RpcError as error:
            outcome.append(error)

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    store = CaptureStore(tmp_path / "captures")
    for _ in range(60):  # the stream is demonstrably flowing through the tap ...
        assert answered.acquire(timeout=60), "the stream stalled"
    wait_for(lambda: store.summary().requests >= 10, 60, "10 captures on disk")  # ... and being recorded ...
    assert not outcome and client.is_alive()
    proxy.kill()  # ... when the tap dies with SIGKILL: no flush, no clean shutdown
    client.join(60)
    assert outcome and outcome[0].code() == grpc.StatusCode.UNAVAILABLE

    indexed = store.verify()  # every index row points at a complete payload of the recorded size
    assert indexed >= 10  # what was durable before the kill stays durable
    captured = store.load(model_id)
    assert captured.features.shape == (2 * indexed, 8, 8, 8)
    # A prefix of the stream, in order, each request once.
    assert captured.sample_ids == [f"digits/test/{j}" for j in range(2 * indexed)]

    CaptureWriter(tmp_path / "captures").close()  # the next tap start: temporaries removed, orphans indexed
    assert not list((tmp_path / "captures" / SHARD_DIR).glob(TMP_PREFIX + "*"))
    recovered = store.verify()
    assert indexed <= recovered <= len(sent)
    assert store.summary().requests == recovered
    assert store.load(model_id).sample_ids == [f"digits/test/{j}" for j in range(2 * recovered)]


def test_failing_disk_drops_captures_not_traffic(tap, channels, model_id: str, tmp_path: Path) -> None:
    proxy = tap("--flush-interval", "0.02")
    stub = pb_grpc.SplitInferenceStub(channels(proxy.address))
    x = torch.rand((3, 8, 8, 8), generator=torch.Generator().manual_seed(1))
    stub.Infer(make_request(model_id, "before", x), timeout=10)
    shards = tmp_path / "captures" / SHARD_DIR
    # The index commit is the last step of a shard write (cem.captures.store.CaptureWriter.append): once the
    # index lists the capture, its write has succeeded whatever happens to the disk next.
    wait_for(lambda: CaptureStore(tmp_path / "captures").summary().requests == 1, 30, "the first capture on disk")
    shutil.rmtree(shards)
    shards.write_text("not a directory any more")  # every later shard write fails with an OSError
    for i in range(10):
        assert len(stub.Infer(make_request(model_id, f"during-{i}", x), timeout=10).predictions) == 3
    stats = proxy.terminate()
    assert stats["recorded"] == 1
    assert stats["dropped_write_failed"] == 10
    assert "could not write the store" in proxy.log()
