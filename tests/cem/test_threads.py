"""The one thread rule of every command: --threads, else OMP_NUM_THREADS, else the CPUs this process may use."""

from __future__ import annotations

import os

import pytest
import torch

from cem.errors import ConfigError
from cem.threads import THREADS_ENV, apply_threads, available_cpus, resolve_threads


def test_an_explicit_count_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_threads(2) == 2


def test_the_environment_wins_over_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_threads(None) == 3
    monkeypatch.setenv(THREADS_ENV, "4,2")  # OpenMP's per-level list: the outer level is torch's
    assert resolve_threads(None) == 4


def test_without_either_every_cpu_of_the_affinity_mask_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert resolve_threads(None) == available_cpus() == len(os.sched_getaffinity(0))


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
