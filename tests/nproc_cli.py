"""Run a CLI as ``--nproc 2`` (it re-launches itself through torchrun) and read what rank 0 printed: the harness of
the data-parallel CLI tests (imported by name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# What a launcher sets: a test run from inside one must not make the CLI believe it is a worker already.
LAUNCH_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_with_two_ranks(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module ARGS --nproc 2`` from the repository root, asserted to exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([sys.executable, "-m", module, *args, "--nproc", "2"], cwd=REPO, capture_output=True,
                          text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rank0_summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one ``--json`` summary line: rank 0 prints it, rank 1 prints nothing."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])
