"""Seeded fuzzing of ``cem-cloud`` and ``cem-tap``: hostile traffic, direct and through the tap.

Every byte a caller sends is untrusted, and the tap sits in front of the cloud for every request.
So a run starts a real ``cem-cloud`` and a real ``cem-tap`` (child processes on 127.0.0.1 port 0,
so that /proc/<pid>/status gives each one's RSS) and sends every generated case on both paths,
direct to the cloud and through the tap, as raw bytes over grpc's generic multicallables so that
nothing on the client side refuses to send them.

What ``FuzzReport.problems`` lists, by check (``CHECKS``; tests/fuzz asserts each is empty): any
UNKNOWN or INTERNAL; any status outside the case's expected set (valid requests must be OK; a call
still open at its 5 s deadline has hung); a different status or response count through the tap
than direct; RSS growth of either process after warm-up beyond the tolerance; health not SERVING
or a valid request not answered afterwards; an answered valid request (found by its unique sample
ids) missing from the capture store once the tap has exited; a non-zero exit after SIGTERM.

The parts, one job each: ``spec`` (what a case is, the code sets and check names), ``messages``
(InferRequest bytes, well-formed and hostile), ``cases`` (the message classes and ``make_case``),
``calls`` (sending raw bytes), ``services`` (the bundle and the two processes), ``checks`` (the
judge), ``report`` (``FuzzReport`` and its table), ``run`` (``fuzz_services``).
benchmarks/fuzz_services.py is the command line; tests/fuzz runs a bounded version; docs/fuzz.md
records a long run and what the fuzz found.
"""

from __future__ import annotations

from fuzzing.calls import Caller, Outcome
from fuzzing.cases import CLASS_WEIGHTS, make_case
from fuzzing.checks import check_outcome, compare_paths
from fuzzing.report import FuzzReport, format_table
from fuzzing.run import RunConfig, checkpoints, fuzz_services
from fuzzing.services import service_env, start_cloud, start_tap, target_for
from fuzzing.spec import AFTER, CAPTURE, CHECKS, EXIT, FORBIDDEN, MEMORY, PARITY, PATHS, STATUS, Case, Target

__all__ = [
    "AFTER", "CAPTURE", "CHECKS", "CLASS_WEIGHTS", "EXIT", "FORBIDDEN", "MEMORY", "PARITY", "PATHS", "STATUS",
    "Case", "Caller", "FuzzReport", "Outcome", "RunConfig", "Target",
    "check_outcome", "checkpoints", "compare_paths", "format_table", "fuzz_services", "make_case", "service_env",
    "start_cloud", "start_tap", "target_for",
]
