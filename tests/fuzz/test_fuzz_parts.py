"""The fuzz's parts without a run: its public surface, the wire helpers, the judge, the checkpoints,
the service helpers on a tiny child, and the script's command line from the repository root."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

import fuzzing  # benchmarks/fuzzing, on the path by conftest.py
from cem.processes import ServiceProcess
from fuzzing.messages import pad_to, varint
from fuzzing.services import exit_counters, rss_kb, stop_service
from fuzzing.spec import INFER, STREAM, TOO_LARGE
from protos import cem_split_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
CODE = grpc.StatusCode


def test_the_public_surface_is_pinned() -> None:
    assert fuzzing.__all__ == [
        "AFTER", "CAPTURE", "CHECKS", "CLASS_WEIGHTS", "EXIT", "FORBIDDEN", "MEMORY", "PARITY", "PATHS", "STATUS",
        "Case", "Caller", "FuzzReport", "Outcome", "RunConfig", "Target",
        "check_outcome", "checkpoints", "compare_paths", "format_table", "fuzz_services", "make_case", "service_env",
        "start_cloud", "start_tap", "target_for",
    ]
    assert all(hasattr(fuzzing, name) for name in fuzzing.__all__)
    assert set(fuzzing.CHECKS) == {fuzzing.FORBIDDEN, fuzzing.STATUS, fuzzing.PARITY, fuzzing.MEMORY, fuzzing.AFTER,
                                   fuzzing.CAPTURE, fuzzing.EXIT}


@pytest.mark.parametrize("value, wire", [(0, b"\x00"), (1, b"\x01"), (300, b"\xac\x02"), (-1, b"\xff" * 9 + b"\x01")])
def test_varint_is_protobufs(value: int, wire: bytes) -> None:
    assert varint(value) == wire


@pytest.mark.parametrize("size", [100, 127, 128, 129, 130, 16_383, 16_384, 16_385, 262_144, 262_145, 327_680])
def test_pad_to_gives_exactly_the_size_and_still_the_same_request(size: int) -> None:
    request = pb.InferRequest(model_id="m", request_id="r", sample_ids=["d/test/1"])
    padded = pad_to(request.SerializeToString(), size)
    assert len(padded) == size
    parsed = pb.InferRequest.FromString(padded)
    parsed.DiscardUnknownFields()
    assert parsed == request


def test_checkpoints_mark_the_warm_up_its_end_and_steps_to_the_end() -> None:
    marks = fuzzing.checkpoints(fuzzing.RunConfig(cases=1000, passes=2, warmup=1000, checkpoints=10))
    assert marks[:5] == [200, 400, 600, 800, 1000] and marks[-1] == 2000 and len(marks) == 15
    assert fuzzing.checkpoints(fuzzing.RunConfig(cases=3, passes=1, warmup=0, checkpoints=10)) == [1, 2, 3]


def case(method: str = INFER, expected: frozenset = frozenset({CODE.UNIMPLEMENTED}), **kw: object) -> fuzzing.Case:
    fields = {"index": 7, "kind": "methods", "variant": "v", "method": method, "streaming": True, "payloads": ()}
    return fuzzing.Case(**{**fields, **kw}, expected=expected)  # type: ignore[arg-type]


def test_a_hang_a_server_fault_and_a_missing_answer_are_problems() -> None:
    assert fuzzing.check_outcome(case(), fuzzing.Outcome(CODE.UNIMPLEMENTED, "", ())) is None
    hung = fuzzing.check_outcome(case(), fuzzing.Outcome(CODE.DEADLINE_EXCEEDED, "Deadline Exceeded", ()))
    assert hung is not None and hung[0] == fuzzing.STATUS and "got DEADLINE_EXCEEDED" in hung[1]
    internal = fuzzing.check_outcome(case(), fuzzing.Outcome(CODE.INTERNAL, "Internal error from Core", ()))
    assert internal is not None and internal[0] == fuzzing.FORBIDDEN
    short = fuzzing.check_outcome(
        case(STREAM, frozenset({CODE.OK}), must_answer=2), fuzzing.Outcome(CODE.OK, "", ("a",))
    )
    assert short is not None and short[0] == fuzzing.STATUS and "at least 2" in short[1]


def test_only_an_oversized_stream_may_lose_an_answer_through_the_tap() -> None:
    report = fuzzing.FuzzReport(seed=0, cases=1)
    direct, tap = fuzzing.Outcome(CODE.RESOURCE_EXHAUSTED, "", ("a",)), fuzzing.Outcome(CODE.RESOURCE_EXHAUSTED, "", ())
    fuzzing.compare_paths(case(STREAM, TOO_LARGE, oversized=True), direct, tap, report)
    assert len(report.notes) == 1 and not report.problems
    fuzzing.compare_paths(case(STREAM, TOO_LARGE), direct, tap, report)
    fuzzing.compare_paths(case(), fuzzing.Outcome(CODE.UNIMPLEMENTED, "", ()),
                          fuzzing.Outcome(CODE.DEADLINE_EXCEEDED, "", ()), report)
    assert report.failed(fuzzing.PARITY) and len(report.problems) == 2


CHILD = textwrap.dedent("""
    import json, signal, sys, time
    def stop(*_):
        print(json.dumps({"recorded": 3}), flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("METRICS 127.0.0.1:9", flush=True)
    print("LISTENING 127.0.0.1:1", flush=True)
    time.sleep(60)
""")


def test_rss_and_exit_counters_of_a_service(tmp_path: Path) -> None:
    service = ServiceProcess.start([sys.executable, "-c", CHILD], log_path=tmp_path / "child.log", timeout_s=30)
    assert rss_kb(service) > 1000  # a Python interpreter holds megabytes
    assert exit_counters(service) == {}  # nothing after LISTENING yet
    assert stop_service(service) == 0 and stop_service(service) == 0  # again once it has exited: the same code
    assert exit_counters(service) == {"recorded": 3}


def test_the_script_runs_from_the_repository_root(digits_bundle: Path) -> None:
    """``python benchmarks/fuzz_services.py`` imports the package as it is laid out and checks its flags
    before it starts anything (one child process: importing torch takes seconds on a busy box)."""
    done = subprocess.run([sys.executable, "benchmarks/fuzz_services.py", "--classes", "valid,nope", "--bundle",
                           str(digits_bundle)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert (
        done.returncode == 1 and "expected classes from ['valid', " in done.stderr and "got ['nope']" in done.stderr
    ), done.stderr
