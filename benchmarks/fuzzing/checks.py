"""Judging a run, one function per check (``spec.CHECKS``): what each call ended with, whether the tap
answered as the cloud did, what the services kept in memory, how they are after the run, what the
tap captured, and how they exited.

``check_outcome`` and ``compare_paths`` judge one case as it is merged; the others run once the
cases are sent. Any UNKNOWN or INTERNAL, any code outside the case's expected set (a call still
open at its deadline has hung), and any difference between the paths is a problem, with one
exception that is only noted: a stream whose second message is over the limit may lose its first
answer through the tap (docs/fuzz.md, finding 3).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2

from cem.captures.reader import CaptureStore
from cem.codec import decode_tensor
from cem.wire import SERVICE_NAME
from fuzzing.calls import Caller, Outcome
from fuzzing.messages import Draw
from fuzzing.report import FuzzReport
from fuzzing.spec import (
    CODE,
    EXIT,
    FORBIDDEN,
    HEALTH_CHECK,
    INFER,
    MEMORY,
    NEVER,
    ONLY_OK,
    PARITY,
    STATUS,
    Case,
    Target,
)
from protos import cem_split_pb2 as pb


def check_outcome(case: Case, outcome: Outcome) -> tuple[str, str] | None:
    """(check, why) when ``outcome`` is wrong for ``case``, else None."""
    if outcome.code in NEVER:
        return FORBIDDEN, f"{outcome.code.name} for a client fault: {outcome.details[:200]!r}"
    if outcome.code not in case.expected:
        wanted = "|".join(sorted(c.name for c in case.expected))
        return STATUS, f"expected {wanted}, got {outcome.code.name}: {outcome.details[:200]!r}"
    if len(outcome.answered) < case.must_answer:
        return STATUS, f"expected at least {case.must_answer} response(s), got {len(outcome.answered)}"
    return None


def compare_paths(case: Case, direct: Outcome, tap: Outcome, report: FuzzReport) -> None:
    """The tap promises to be invisible: the same status, and (but see below) the same number of answers."""
    if direct.code == tap.code and len(direct.answered) == len(tap.answered):
        return
    line = (f"{case.describe()} [{case.variant}]: direct {direct.code.name} ({len(direct.answered)} "
            f"answered), tap {tap.code.name} ({len(tap.answered)} answered): {tap.details[:200]!r}")
    if (
        direct.code == tap.code and case.oversized
    ):  # gRPC fails the call on the big message; earlier answers may be lost
        report.notes.append(line)
    else:
        report.fail(PARITY, line)


def missing_captures(captures: Path, target: Target, answered: dict[str, bytes]) -> list[str]:
    """Request ids answered through the tap whose samples are not in the store, bit for bit."""
    store = CaptureStore(captures)
    found: dict[str, list[torch.Tensor]] = {}
    for model_id in (target.model_id, ""):  # a request may leave model_id empty (the tap fills it in)
        loaded = store.load(model_id, feature_shape=target.feature_shape)
        for sample_id, features in zip(loaded.sample_ids, loaded.features, strict=True):
            if sample_id is not None:
                found.setdefault(sample_id, []).append(features)
    missing = []
    for request_id, payload in answered.items():
        request = pb.InferRequest.FromString(payload)
        sent = decode_tensor(request.features)
        pairs = zip(request.sample_ids, sent, strict=False)  # a request without ids pairs nothing
        if not all(any(torch.equal(x, y) for y in found.get(s, [])) for s, x in pairs):
            missing.append(request_id)
    return missing


def after_checks(target: Target, callers: dict[str, Caller], seed: int, answered_tap: dict[str, bytes]) -> list[str]:
    """Health SERVING on both paths, and a fresh valid request answered on both; what failed."""
    problems = []
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME).SerializeToString()
    for path, caller in callers.items():
        try:
            status = health_pb2.HealthCheckResponse.FromString(
                caller.channel.unary_unary(HEALTH_CHECK)(check, timeout=10)
            )
            if status.status != health_pb2.HealthCheckResponse.SERVING:
                problems.append(
                    f"{path}: health {health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)} after the run"
                )
        except grpc.RpcError as error:
            problems.append(f"{path}: health check failed after the run: {error.code().name}")
        request = Draw(target, seed, -1).request(batch=2)
        request.request_id, request.sample_ids[:] = f"final-{path}", [f"final-{path}/test/{i}" for i in range(2)]
        final = Case(
            -1, "final", path, INFER, False, (request.SerializeToString(),), ONLY_OK, valid=(0,), must_answer=1
        )
        outcome = caller.call(final)
        if outcome.code is not CODE.OK:
            problems.append(f"{path}: a valid request after the run got {outcome.code.name}: {outcome.details!r}")
        elif path == "tap":
            answered_tap[request.request_id] = final.payloads[0]
    return problems


def judge(report: FuzzReport, rss_tolerance_kb: int) -> None:
    """RSS growth from the end of the warm-up to the end, against ``rss_tolerance_kb``; clean exits."""
    for name, series in report.rss_kb.items():
        measured = [(sends, kb) for sends, kb in series if sends >= report.warmup]
        if len(measured) >= 2:
            report.rss_growth_kb[name] = measured[-1][1] - measured[0][1]
            if report.rss_growth_kb[name] > rss_tolerance_kb:
                report.fail(MEMORY, f"{name}: RSS grew {report.rss_growth_kb[name]} kB after warm-up "
                                    f"(tolerance {rss_tolerance_kb} kB): {measured}")
    for name, code in report.exit_codes.items():
        if code != 0:
            report.fail(EXIT, f"{name}: exited with {code} after SIGTERM; see its log")
