"""One fuzz run: start cloud and tap, send every case on both paths a few at a time, then judge.

By default every case is sent twice (``passes`` 2, ``warmup`` = ``cases``): the first pass is the
warm-up, and RSS growth is judged over the second, which repeats exactly what the allocators have
already seen (docs/fuzz.md explains why a fresh-traffic baseline is not flat). Several cases are
in flight at once, because gRPC takes 100-700 ms of waiting, not CPU, to refuse a message over the
limit; their results are merged in send order, so a report does not depend on timing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cem.processes import ServiceProcess
from fuzzing.calls import CallerPool, PathResult, call_paths
from fuzzing.cases import CLASS_WEIGHTS, make_case
from fuzzing.checks import after_checks, check_outcome, compare_paths, judge, missing_captures
from fuzzing.report import FuzzReport, progress_line
from fuzzing.services import exit_counters, rss_kb, service_env, start_cloud, start_tap, stop_service
from fuzzing.spec import AFTER, CAPTURE, Case, Target
from protos import cem_split_pb2 as pb

WINDOW = 64  # sends ahead of the oldest unmerged one: a slow call holds a worker, not the whole run


@dataclass
class RunConfig:
    seed: int = 0
    cases: int = 3000
    passes: int = 1  # send cases 0..cases-1 this many times
    warmup: int = 300  # sends before the RSS baseline: allocator arenas, channels and caches settle
    rss_tolerance_kb: int = 10 * 1024
    checkpoints: int = 10
    concurrency: int = 4  # cases in flight; refusing an oversized message takes gRPC >= 100 ms of waiting, not CPU
    malloc_arena_max: int | None = None  # MALLOC_ARENA_MAX for cloud and tap (see service_env); None: glibc's default
    classes: tuple[str, ...] = tuple(CLASS_WEIGHTS)
    progress: Callable[[str], None] | None = None


def fuzz_services(bundle: Path, target: Target, work: Path, config: RunConfig) -> FuzzReport:
    """Start cloud and tap, run the cases on both paths, then check memory, health and captures."""
    report = FuzzReport(
        config.seed, config.cases, config.passes, warmup=min(config.warmup, config.cases * config.passes)
    )
    env = service_env(config.malloc_arena_max)
    services = {"cloud": start_cloud(bundle, target, work, env)}
    try:
        services["tap"] = start_tap(services["cloud"].address, target, work, env)
        pool = CallerPool({"direct": services["cloud"].address, "tap": services["tap"].address})
        answered_tap = run_cases(target, config, pool, services, report)
        for problem in after_checks(target, pool.callers(), config.seed, answered_tap):
            report.fail(AFTER, problem)
        pool.close()
        report.exit_codes["tap"] = stop_service(services["tap"])
        report.recorder = exit_counters(services["tap"])
        missing = missing_captures(work / "captures", target, answered_tap)
        report.answered_valid, report.captured_valid = len(answered_tap), len(answered_tap) - len(missing)
        for request_id in missing[:20]:
            report.fail(CAPTURE, f"answered valid request {request_id} is not in the capture store")
    finally:
        for name, service in reversed(services.items()):
            report.exit_codes[name] = stop_service(service)
    judge(report, config.rss_tolerance_kb)
    return report


def run_cases(target: Target, config: RunConfig, pool: CallerPool, services: dict[str, ServiceProcess],
              report: FuzzReport) -> dict[str, bytes]:
    """All sends, ``config.concurrency`` at a time; returns the valid requests the tap answered (id -> bytes).

    Results are merged in send order. At each checkpoint nothing is in flight when RSS is read.
    With ``passes`` 2 and ``warmup`` = ``cases``, the warm-up is the measured traffic itself: the
    allocators have then seen every size and pattern once, and what the second pass adds is
    what the services keep per request.
    """
    answered_tap: dict[str, bytes] = {}
    marks = set(checkpoints(config))
    pending: deque[tuple[Case, Future]] = deque()
    started = time.monotonic()
    with ThreadPoolExecutor(config.concurrency, thread_name_prefix="fuzz") as executor:
        for send in range(config.cases * config.passes):
            case = make_case(target, config.seed, send % config.cases, config.classes)
            pending.append((case, executor.submit(call_paths, case, pool)))
            while pending and (len(pending) > WINDOW or pending[0][1].done() or send + 1 in marks):
                done, future = pending.popleft()
                merge(done, future.result(), report, answered_tap)
            if send + 1 in marks:
                record_rss(report, services, send + 1)
                if config.progress:
                    config.progress(progress_line(report, send + 1, time.monotonic() - started))
    report.seconds = time.monotonic() - started
    return answered_tap


def checkpoints(config: RunConfig) -> list[int]:
    """Sends after which RSS is read: 5 during the warm-up (its curve), its end (the baseline), then
    ``config.checkpoints`` steps to the end."""
    total = config.cases * config.passes
    warmup = min(config.warmup, total)
    during = range(max(1, warmup // 5), warmup, max(1, warmup // 5)) if warmup >= 5 else ()
    every = max(1, -(-(total - warmup) // config.checkpoints))
    return sorted({*during, warmup, total, *range(warmup, total, every)} - {0})


def merge(case: Case, results: dict[str, PathResult], report: FuzzReport, answered_tap: dict[str, bytes]) -> None:
    """Count and check one case's outcomes (on the main thread, in case order, so reports are reproducible)."""
    report.messages += max(1, len(case.payloads))
    for path, result in results.items():
        report.seconds_by_kind[(case.kind, path)] += result.seconds
        report.counts[(case.kind, path, result.outcome.code.name)] += 1
        problem = check_outcome(case, result.outcome)
        if problem:
            report.fail(problem[0], f"{path}: {case.describe()} [{case.variant}]: {problem[1]}")
    compare_paths(case, results["direct"].outcome, results["tap"].outcome, report)
    answered = set(results["tap"].outcome.answered)
    for position in case.valid:
        request = pb.InferRequest.FromString(case.payloads[position])
        if request.request_id in answered:
            answered_tap[request.request_id] = case.payloads[position]


def record_rss(report: FuzzReport, services: dict[str, ServiceProcess], done: int) -> None:
    for name, service in services.items():
        report.rss_kb.setdefault(name, []).append((done, rss_kb(service)))
