"""The decoder attack's learning-rate schedules, per optimiser step: a linear warm-up, then either one cosine
decay over the whole run (``cosine``) or a constant rate and a cosine decay over its last epochs only (``wsd``,
warm-up / stable / decay).

Why the warm-up. At the paper's learning rate (5e-3) the decoding network's first
updates, from freshly initialised batch-norm statistics, threw it onto a plateau
near the mean image (validation MSE about 0.02 on digits) for up to 20 of 50
epochs; one epoch of linear warm-up removed that plateau (docs/attacks.md).

Why per step. A per-epoch decay with few epochs moves in coarse jumps; per step
the decay is the same curve at any epoch count.

Why ``wsd``. The convergence check compares the attack at half its epochs with
the attack at all of them. Under one cosine decay the two runs part at the first
step, so the check trains half a run more (1.5x). Under ``wsd`` the two runs
share their whole constant-rate stretch: the half run is the full run's first
epochs plus its own short decay, so the check costs that decay only (1.1x at
the default decay of a fifth of the epochs), and the half run is exactly what a
run of half the epochs would have been.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attacker.attack_names import Schedule
from cem.errors import ConfigError

COSINE: Schedule = "cosine"
WSD: Schedule = "wsd"


LrFactor = Callable[[int], float]  # optimizer step (from 0) -> multiple of the peak learning rate


def _checked(total_steps: int, warmup_steps: int, floor: float) -> None:
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"expected 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if not 0 < floor <= 1:
        raise ConfigError(f"expected 0 < min_lr <= the peak learning rate, got a ratio of {floor}")


def _cosine(progress: float, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(*, total_steps: int, warmup_steps: int, floor: float) -> LrFactor:
    """Ramp linearly from ``1/warmup_steps`` of the peak to the peak over ``warmup_steps``, then decay along one
    cosine to ``floor`` times the peak at the last of ``total_steps``."""
    _checked(total_steps, warmup_steps, floor)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return _cosine((step - warmup_steps) / max(1, total_steps - 1 - warmup_steps), floor)

    return factor


def warmup_stable_decay(*, total_steps: int, warmup_steps: int, decay_steps: int, floor: float) -> LrFactor:
    """The warm-up of ``warmup_cosine``, then the peak rate, then a cosine decay to ``floor`` over the last
    ``decay_steps`` of ``total_steps`` (it starts after the warm-up if the two overlap). Two such schedules with
    the same warm-up agree on every step before the earlier decay: what the convergence check shares."""
    _checked(total_steps, warmup_steps, floor)
    if not 1 <= decay_steps <= total_steps:
        raise ConfigError(f"expected 1 <= decay_steps <= total_steps, got {decay_steps} and {total_steps}")
    decay_start = max(warmup_steps, total_steps - decay_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < decay_start:
            return 1.0
        return _cosine((step - decay_start) / max(1, total_steps - 1 - decay_start), floor)

    return factor
