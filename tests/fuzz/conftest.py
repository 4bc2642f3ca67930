"""Fixtures of the fuzz area. The fuzz lives in ``benchmarks/fuzzing`` (shared with the long run,
``benchmarks/fuzz_services.py``); like the script, the tests import it with ``benchmarks/`` on the path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import fuzzing  # noqa: E402 - needs benchmarks/ on the path, as the script has it

MAX_BATCH = 64
MAX_MESSAGE_BYTES = 256 * 1024  # small, so "just above the limit" is cheap to send


@pytest.fixture(scope="session")
def fuzz_target(digits_bundle: Path) -> fuzzing.Target:
    """What the generator needs to know about the served model and the limits the services run with."""
    return fuzzing.target_for(digits_bundle, MAX_BATCH, MAX_MESSAGE_BYTES)
