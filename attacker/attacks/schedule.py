"""The decoder attack's learning-rate schedule: a linear warm-up, then one cosine decay, per optimiser step.

Why the warm-up. At the paper's learning rate (5e-3) the decoding network's first
updates, from freshly initialised batch-norm statistics, threw it onto a plateau
near the mean image (validation MSE about 0.02 on digits) for up to 20 of 50
epochs; one epoch of linear warm-up removed that plateau (docs/attacks.md).

Why per step. A per-epoch decay with few epochs moves in coarse jumps; per step
the decay is the same curve at any epoch count.
"""

from __future__ import annotations

import math

import torch

from cem.errors import ConfigError


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Ramp each group's lr linearly from ``1/warmup_steps`` of its initial value to that value over
    ``warmup_steps``, then decay it along a cosine to ``min_lr`` at ``total_steps``."""
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"expected 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    peak = optimizer.param_groups[0]["lr"]
    if any(group["lr"] != peak for group in optimizer.param_groups) or not 0 < min_lr <= peak:
        raise ConfigError(f"expected one learning rate for all groups and 0 < min_lr <= it, got min_lr {min_lr}")
    floor = min_lr / peak

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
