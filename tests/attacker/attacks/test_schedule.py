"""The decoder attack's learning-rate schedule, step by step."""

from __future__ import annotations

import pytest
import torch

from attacker.attacks.schedule import warmup_cosine
from cem.errors import ConfigError


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def rates(total: int, warmup: int) -> list[float]:
    opt = optimizer()
    scheduler = warmup_cosine(opt, total_steps=total, warmup_steps=warmup, min_lr=0.01)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return seen


def test_warm_up_then_one_cosine_decay_to_the_floor() -> None:
    lr = rates(total=40, warmup=10)
    assert lr[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lr[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))
    assert lr[-1] == pytest.approx(0.01)


def test_without_warm_up_the_decay_starts_at_the_peak() -> None:
    lr = rates(total=5, warmup=0)
    assert lr[0] == pytest.approx(1.0) and lr[-1] == pytest.approx(0.01)


@pytest.mark.parametrize(("total", "warmup", "min_lr"), [(0, 0, 0.01), (10, 10, 0.01), (10, 2, 2.0), (10, 2, 0.0)])
def test_impossible_schedules_are_refused(total: int, warmup: int, min_lr: float) -> None:
    with pytest.raises(ConfigError):
        warmup_cosine(optimizer(), total_steps=total, warmup_steps=warmup, min_lr=min_lr)
