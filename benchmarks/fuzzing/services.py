"""The services under test: a bundle to serve, ``cem-cloud`` and ``cem-tap`` as child processes, their RSS.

Both are started through ``cem.processes.ServiceProcess`` on 127.0.0.1 port 0, with the limits of
the ``Target`` (small, so "just above the limit" is cheap to send) and ``--max-delay-ms 0``. They
are child processes rather than in-process servers so that each one's RSS can be read from
``/proc/<pid>/status`` and so that the tap's graceful exit (every queued capture written) is the
real one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cem.processes import ServiceProcess
from cem.wire import parse_listening_line
from fuzzing.spec import Target

START_TIMEOUT_S = 120.0  # the cloud loads torch and the bundle; on a busy 2-core box that takes a while
STOP_GRACE_S = 60.0  # SIGTERM: the tap writes every queued capture before it exits


def target_for(bundle: Path, max_batch: int, max_message_bytes: int) -> Target:
    """What the generator needs to know about ``bundle`` served with these limits."""
    from cem.bundle import load_manifest

    manifest = load_manifest(bundle)
    return Target(manifest.model_id, tuple(manifest.feature_shape), max_batch, max_message_bytes)  # type: ignore[arg-type]


def service_env(malloc_arena_max: int | None) -> dict[str, str]:
    """Child environment: this one's, unbuffered, one OpenMP thread, optionally fewer glibc malloc arenas.

    glibc gives threads that allocate at the same time arenas of their own (up to 8 per core), so
    under fresh traffic RSS keeps climbing, bounded, until every arena has seen the largest
    messages; ``MALLOC_ARENA_MAX=2`` makes that curve settle sooner (docs/fuzz.md). The default
    run leaves glibc's setting alone and replays its warm-up instead.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if malloc_arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(malloc_arena_max)
    return env


def start_cloud(bundle: Path, target: Target, work: Path, env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess.start([
        sys.executable, "-m", "cloud_server.cli", "--bundle", bundle, "--port", "0", "--device", "cpu",
        "--max-batch", str(target.max_batch), "--max-message-bytes", str(target.max_message_bytes),
        "--max-delay-ms", "0", "--workers", "8", "--drain-s", "0.1", "--log-level", "WARNING",
    ], log_path=work / "cloud.log", name="cloud", env=env, timeout_s=START_TIMEOUT_S)


def start_tap(upstream: str, target: Target, work: Path, env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess.start([
        sys.executable, "-m", "attacker.tap.cli", "--listen", "127.0.0.1:0", "--upstream", upstream,
        "--captures", work / "captures", "--max-message-bytes", str(target.max_message_bytes),
        "--log-level", "WARNING", "--json",
    ], log_path=work / "tap.log", name="tap", env=env, timeout_s=START_TIMEOUT_S)


def stop_service(service: ServiceProcess) -> int:
    """SIGTERM (the graceful path), SIGKILL after ``STOP_GRACE_S``; its exit code (also once it has exited)."""
    return service.terminate(grace_s=STOP_GRACE_S)


def rss_kb(service: ServiceProcess) -> int:
    """Its resident set size now, from ``/proc/<pid>/status`` (Linux)."""
    with open(f"/proc/{service.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def exit_counters(service: ServiceProcess) -> dict[str, int]:
    """The JSON object a ``--json`` service prints as its last stdout line at exit ({} when it printed none)."""
    lines = service.stdout_lines()
    listening = next((i for i, line in enumerate(lines) if parse_listening_line(line) is not None), len(lines))
    after = [line for line in lines[listening + 1:] if line.strip()]
    return json.loads(after[-1]) if after else {}
