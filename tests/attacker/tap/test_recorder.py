"""The capture recorder in-process: a stalled disk drops captures instead of blocking traffic; what is not stored."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from polling import wait_for
from tap_helpers import unusable_directory

from attacker.tap.recorder import CaptureRecorder, RecorderConfig
from cem.captures.reader import CaptureStore
from cem.captures.records import parse_capture
from cem.captures.store import SHARD_DIR, CaptureWriter
from cem.codec import encode_tensor
from cem.errors import ConfigError
from protos import cem_split_pb2 as pb

INFER = "/cem.split.v1.SplitInference/Infer"


def test_a_stalled_disk_fills_the_queue_and_offer_drops_captures_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread is held inside a shard write (it has said so and cannot leave before ``release``);
    meanwhile every ``offer`` returns: ``max_queue`` captures are queued, the rest dropped. Nothing is timed:
    had ``offer`` waited for the disk, the offering thread could not have finished while the writer is held."""
    write = CaptureWriter.append
    entered, release = threading.Event(), threading.Event()

    def stalled_append(writer: CaptureWriter, records: list) -> str:
        entered.set()
        assert release.wait(120), "the test never released the stalled write"
        return write(writer, records)

    monkeypatch.setattr(CaptureWriter, "append", stalled_append)
    recorder = CaptureRecorder(tmp_path, RecorderConfig(max_queue=3, batch_records=1, flush_interval_s=0.01))
    payloads = [
        pb.InferRequest(model_id="m", request_id=f"r{i}", features=encode_tensor(torch.rand(1, 2))).SerializeToString()
        for i in range(11)
    ]
    accepted: list[bool] = []
    try:
        assert recorder.offer(INFER, payloads[0])
        assert entered.wait(60), "the writer never took the first capture"  # it now holds it, stalled
        offering = threading.Thread(target=lambda: accepted.extend(recorder.offer(INFER, p) for p in payloads[1:]))
        offering.start()
        offering.join(60)  # a hang detector only: a blocking offer would never return while the write is held
        assert not offering.is_alive(), "offer() waited for the stalled disk"
        assert recorder.stats().recorded == 0  # the writer is still held
        assert accepted == [True] * 3 + [False] * 7
        assert recorder.queue_depth() == 3
    finally:
        release.set()
    stats = recorder.close()
    assert (stats.offered, stats.recorded, stats.dropped_queue_full) == (11, 4, 7)
    assert CaptureStore(tmp_path).verify() == 4


def test_unparsable_and_featureless_requests_are_not_stored(tmp_path: Path) -> None:
    recorder = CaptureRecorder(tmp_path, RecorderConfig(flush_interval_s=0.01))
    recorder.offer(INFER, b"\xff\xff\xff")
    recorder.offer(INFER, pb.InferRequest(model_id="m", request_id="no-features").SerializeToString())
    stats = recorder.close()
    assert stats.unparsable == 1 and stats.recorded == 0
    assert parse_capture("/cem.split.v1.SplitInference/GetModelInfo", b"", 0.0) is None


def test_recorder_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="expected max_queue >= 1, got 0"):
        RecorderConfig(max_queue=0)


def test_the_recorder_opens_a_directory_that_becomes_usable(tmp_path: Path) -> None:
    captures = unusable_directory(tmp_path)
    recorder = CaptureRecorder(captures, RecorderConfig(flush_interval_s=0.01, reopen_interval_s=0.05))
    assert not recorder.capturing
    captures.parent.unlink()  # the operator fixes the mount
    wait_for(lambda: recorder.capturing, 30, "the recorder to open the repaired directory")
    recorder.close()
    assert (captures / SHARD_DIR).is_dir()
