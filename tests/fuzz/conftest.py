"""Fixtures of the fuzz area: the fuzz module (it lives in benchmarks/, shared with the long run) and one
bounded run against a real ``cem-cloud`` and a real ``cem-tap``, shared by every test of a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_services.py"
MAX_BATCH = 64
MAX_MESSAGE_BYTES = 256 * 1024  # small, so "just above the limit" is cheap to send


@pytest.fixture(scope="session")
def fuzz() -> ModuleType:
    """benchmarks/fuzz_services.py as a module: one generator and runner for the suite and the long run."""
    spec = importlib.util.spec_from_file_location("fuzz_services", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_services"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fuzz_target(fuzz: ModuleType, digits_bundle: Path):
    """What the generator needs to know about the served model and the limits the services run with."""
    return fuzz.target_for(digits_bundle, MAX_BATCH, MAX_MESSAGE_BYTES)
