"""The capture store (``cem.captures``) on real files: round trips over wire dtypes, crash recovery, and a
full disk that leaves no partial shard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from cem.captures.reader import CaptureStore
from cem.captures.records import CaptureRecord, parse_capture
from cem.captures.store import SHARD_DIR, SHARD_SUFFIX, CaptureWriter, encode_shard
from cem.codec import decode_tensor, encode_tensor
from cem.durable import TMP_PREFIX, write_durably
from protos import cem_split_pb2 as pb

INFER = "/cem.split.v1.SplitInference/Infer"


def record(request_id: str, x: torch.Tensor, dtype: str = "float32", ids: tuple[str, ...] = (),
           model: str = "m1") -> CaptureRecord:
    payload = pb.InferRequest(model_id=model, request_id=request_id, features=encode_tensor(x, dtype),
                              sample_ids=list(ids))
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
    dtypes = ("float32", "float16", "int8")
    expected = torch.cat([decode_tensor(encode_tensor(x, d)) for x, d in zip(xs, dtypes, strict=True)])
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
