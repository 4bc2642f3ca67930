"""The decoder attack's learning-rate schedules, step by step."""

from __future__ import annotations

import pytest

from attacker.attacks.schedule import warmup_cosine, warmup_stable_decay
from cem.errors import ConfigError


def test_warm_up_then_one_cosine_decay_to_the_floor() -> None:
    factor = warmup_cosine(total_steps=40, warmup_steps=10, floor=0.01)
    lr = [factor(step) for step in range(40)]
    assert lr[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lr[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))
    assert lr[-1] == pytest.approx(0.01)


def test_without_warm_up_the_decay_starts_at_the_peak() -> None:
    factor = warmup_cosine(total_steps=5, warmup_steps=0, floor=0.01)
    assert factor(0) == pytest.approx(1.0) and factor(4) == pytest.approx(0.01)


def test_wsd_holds_the_peak_then_decays_over_its_last_steps_to_the_floor() -> None:
    factor = warmup_stable_decay(total_steps=40, warmup_steps=10, decay_steps=8, floor=0.01)
    lr = [factor(step) for step in range(40)]
    assert lr[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lr[10:33] == [1.0] * 23
    assert all(a > b for a, b in zip(lr[32:], lr[33:], strict=False))
    assert lr[-1] == pytest.approx(0.01)


def test_two_wsd_runs_agree_until_the_shorter_one_decays() -> None:
    """What the convergence check shares: the half run is the full run's first steps, then its own decay."""
    full = warmup_stable_decay(total_steps=100, warmup_steps=5, decay_steps=20, floor=0.01)
    half = warmup_stable_decay(total_steps=50, warmup_steps=5, decay_steps=10, floor=0.01)
    assert [half(step) for step in range(40)] == [full(step) for step in range(40)]
    assert half(40) == 1.0 and half(41) < full(41) == 1.0


def test_a_decay_longer_than_the_stable_stretch_starts_after_the_warm_up() -> None:
    factor = warmup_stable_decay(total_steps=10, warmup_steps=4, decay_steps=10, floor=0.1)
    assert factor(3) == pytest.approx(1.0) and factor(4) == pytest.approx(1.0) and factor(9) == pytest.approx(0.1)


@pytest.mark.parametrize(("total", "warmup", "floor"), [(0, 0, 0.01), (10, 10, 0.01), (10, 2, 2.0), (10, 2, 0.0)])
def test_impossible_schedules_are_refused(total: int, warmup: int, floor: float) -> None:
    with pytest.raises(ConfigError):
        warmup_cosine(total_steps=total, warmup_steps=warmup, floor=floor)
    with pytest.raises(ConfigError):
        warmup_stable_decay(total_steps=total, warmup_steps=warmup, decay_steps=1, floor=floor)


@pytest.mark.parametrize("decay", [0, 11])
def test_a_decay_outside_the_run_is_refused(decay: int) -> None:
    with pytest.raises(ConfigError):
        warmup_stable_decay(total_steps=10, warmup_steps=2, decay_steps=decay, floor=0.1)
