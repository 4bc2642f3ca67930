"""The one thread rule of every command: --threads, else OMP_NUM_THREADS, else the CPUs this process may use."""

from __future__ import annotations

import os

import pytest
import torch

from cem.errors import ConfigError
from cem.threads import THREADS_ENV, apply_threads, available_cpus, idle_cpus, resolve_threads


def test_an_explicit_count_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_threads(2) == 2


def test_the_environment_wins_over_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_threads(None) == 3
    monkeypatch.setenv(THREADS_ENV, "4,2")  # OpenMP's per-level list: the outer level is torch's
    assert resolve_threads(None) == 4


def test_without_either_the_cpus_other_work_leaves_idle_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    cpus = available_cpus()
    assert cpus == len(os.sched_getaffinity(0))
    assert idle_cpus(load=0.0) == cpus  # an idle machine: every core
    assert idle_cpus(load=cpus - 0.6) == 1  # one core's worth left, rounded
    assert idle_cpus(load=10 * cpus) == 1  # never fewer than one
    assert 1 <= resolve_threads(None) <= cpus


@pytest.mark.parametrize("requested, env, message", [
    (0, None, "expected --threads >= 1, got 0"),
    (None, "many", "expected OMP_NUM_THREADS to be a positive integer, got 'many'"),
    (None, "0", "expected OMP_NUM_THREADS >= 1, got '0'"),
])
def test_unusable_counts_are_config_errors(monkeypatch: pytest.MonkeyPatch, requested: int | None,
                                           env: str | None, message: str) -> None:
    if env is not None:
        monkeypatch.setenv(THREADS_ENV, env)
    with pytest.raises(ConfigError, match=message):
        resolve_threads(requested)


def test_apply_sets_torch_and_says_what_it_set() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_threads(2) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
