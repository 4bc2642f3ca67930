"""The capture store and the recorder, in-process: round trips, crash recovery, back-pressure that drops captures."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import torch

from cem.captures.reader import CaptureStore
from attacker.tap.recorder import CaptureRecorder, RecorderConfig
from cem.captures.records import CaptureRecord, parse_capture
from cem.captures.store import INDEX_FILE, SHARD_DIR, SHARD_SUFFIX, CaptureWriter, encode_shard
from cem.durable import TMP_PREFIX, write_durably
from cem.codec import decode_tensor, encode_tensor
from cem.errors import ConfigError
from protos import cem_split_pb2 as pb

INFER = "/cem.split.v1.SplitInference/Infer"


def record(request_id: str, x: torch.Tensor, dtype: str = "float32", ids: tuple[str, ...] = (), model: str = "m1") -> CaptureRecord:
    payload = pb.InferRequest(model_id=model, request_id=request_id, features=encode_tensor(x, dtype), sample_ids=list(ids))
    parsed = parse_capture(INFER, payload.SerializeToString(), time.time())
    assert parsed is not None
    return parsed


def test_round_trip_over_wire_dtypes(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    xs = [torch.rand((n, 4, 2, 2), generator=generator) for n in (3, 1, 2)]
    records = [
        record("a", xs[0], "float32", ("digits/test/1", "digits/test/2", "digits/test/3")),
        record("b", xs[1], "float16"),
        record("c", xs[2], "int8"),
        record("d", torch.rand((0, 4, 2, 2)), "float32"),  # an empty batch is a valid request too
        record("e", torch.rand((1, 9)), "float32", model="m2"),
    ]
    writer = CaptureWriter(tmp_path)
    writer.append(records[:2])
    writer.append(records[2:])
    writer.close()

    store = CaptureStore(tmp_path)
    assert store.verify() == 5
    summary = store.summary()
    assert (summary.requests, summary.samples) == (5, 7)
    by_model = {m.model_id: m for m in summary.models}
    assert by_model["m1"].requests == 4 and by_model["m1"].samples == 6 and by_model["m1"].samples_with_ids == 3
    assert by_model["m1"].dtypes == ["float16", "float32", "int8"] and by_model["m1"].sample_shapes == [[4, 2, 2]]
    assert summary.first_at <= summary.last_at

    loaded = store.load("m1", feature_shape=(4, 2, 2))
    expected = torch.cat([decode_tensor(encode_tensor(x, d)) for x, d in zip(xs, ("float32", "float16", "int8"))])
    assert torch.equal(loaded.features, expected)
    assert loaded.sample_ids == ["digits/test/1", "digits/test/2", "digits/test/3", None, None, None]
    assert store.load("m1", feature_shape=(4, 2, 2), max_samples=4).features.shape == (4, 4, 2, 2)
    assert store.load("m1", feature_shape=(8, 8, 8)).features.shape == (0, 8, 8, 8)  # wrong shape: skipped
    assert store.load("unknown").features.shape[0] == 0
    assert CaptureStore(tmp_path / "missing").summary().requests == 0


def test_crash_leftovers_are_cleaned_and_orphans_indexed(tmp_path: Path) -> None:
    x = torch.rand((2, 4, 2, 2))
    writer = CaptureWriter(tmp_path)
    writer.append([record("kept", x)])
    writer.close()
    shards = tmp_path / SHARD_DIR
    # What a crash leaves behind: a half-written temporary, and a durable shard whose index commit never happened.
    (shards / f"{TMP_PREFIX}zzz{SHARD_SUFFIX}").write_bytes(b"\x00partial")
    write_durably(shards / f"99999999999999999999-1-000000{SHARD_SUFFIX}", encode_shard([record("orphan", x)]))
    assert CaptureStore(tmp_path).verify() == 1  # readers see only what the index lists

    CaptureWriter(tmp_path).close()
    assert not list(shards.glob(TMP_PREFIX + "*"))
    store = CaptureStore(tmp_path)
    assert store.verify() == 2
    assert store.summary().requests == 2
    CaptureWriter(tmp_path).close()  # recovery is idempotent
    assert store.verify() == 2


def test_slow_disk_fills_the_queue_and_drops_captures_without_blocking(tmp_path: Path) -> None:
    recorder = CaptureRecorder(tmp_path, RecorderConfig(max_queue=3, batch_records=1, flush_interval_s=0.01))
    payloads = iter(
        pb.InferRequest(model_id="m", request_id=f"r{i}", features=encode_tensor(torch.rand(1, 2))).SerializeToString()
        for i in range(11)
    )
    blocker = sqlite3.connect(tmp_path / INDEX_FILE, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the disk "stalls": the writer thread waits on the index lock
    try:
        assert recorder.offer(INFER, next(payloads))
        deadline = time.monotonic() + 10
        while recorder._queue.qsize() and time.monotonic() < deadline:  # the writer holds the first record
            time.sleep(0.01)
        started = time.perf_counter()
        accepted = [recorder.offer(INFER, next(payloads)) for _ in range(10)]
        assert time.perf_counter() - started < 0.5  # offering never waits for the disk
        assert accepted == [True] * 3 + [False] * 7
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
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
