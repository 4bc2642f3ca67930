"""Pieces both attack loops share: seeded networks, shuffled batches, best-checkpoint keeping."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from attacker.attacks.data import AttackSplit
from cem.convergence import CONVERGENCE_TAIL, CONVERGENCE_TOLERANCE
from cem.models import InversionConfig, InversionNetwork

# The decoding networks and each batch of features they train on are kept channels-last: an epoch of the
# decoder attack's step took 0.80x the time on CPU (benchmarks/bench_attack_epoch.py, docs/benchmarks.md).
ATTACK_MEMORY_FORMAT = torch.channels_last


@dataclass(frozen=True)
class HalfBudgetCheck:
    """The same attack (same seed, same schedule shape) trained with half the epochs, beside the full run.

    ``gain`` is how much lower the full run's best validation MSE is, relative to it: what doubling
    the epochs bought. Diminishing returns make the next doubling buy less, so a gain within the
    tolerance says the full run had converged.
    """

    half_epochs: int
    half_val_mse: float
    full_val_mse: float

    @property
    def gain(self) -> float:
        return (self.half_val_mse - self.full_val_mse) / max(self.full_val_mse, 1e-12)


@dataclass
class TrainedAttack:
    """An attack's network (best validation checkpoint, eval mode) and its per-epoch history.

    ``history`` rows hold at least ``epoch`` and ``val_mse`` (None without validation
    data); ``best_epoch`` 0 means the
    initial network (a GAN generator initialised from a decoder attack) was never beaten.
    ``half_budget`` is set when the attack also ran with half its epochs to judge convergence.
    ``network`` maps transmitted features to images: an ``InversionNetwork`` for the learned attacks, a
    ``FeatureMatchingInverter`` for the optimisation attacks (whose "epochs" are optimisation steps).
    ``extra`` holds attack-specific facts for the record (the optimisation's τ, steps, timings).
    ``started_from`` is the attack this one refined (the hybrid's decoder attack): if that one had not
    converged, neither has this one. ``resumed_epochs`` are the epochs of ``history`` a previous, interrupted
    run trained (``attacker.attacks.resume``); this run trained the rest. ``pretraining_cached``: the
    network this one started from (the GAN's decoder pre-training) was an earlier run's, loaded from the cache,
    so this run's wall time leaves that training out.
    """

    network: torch.nn.Module
    history: list[dict[str, float | None]] = field(default_factory=list)
    best_epoch: int = 0
    half_budget: HalfBudgetCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    started_from: TrainedAttack | None = None
    resumed_epochs: int = 0
    pretraining_cached: bool = False

    def val_curve(self) -> list[float]:
        """The validation MSE of every epoch that had validation data."""
        return [mse for row in self.history if (mse := row.get("val_mse")) is not None]

    def best_val_mse(self) -> float | None:
        return min(self.val_curve(), default=None)

    def still_improving(self, tail: float = CONVERGENCE_TAIL, tolerance: float = CONVERGENCE_TOLERANCE) -> bool:
        """Whether a longer run would likely reconstruct better, so that a defense scored against this
        attack looks better than it is. False without validation data (nothing to judge by).

        With a half-budget run: whether doubling the epochs lowered the best validation MSE by more than
        ``tolerance`` (relative). Without one: whether the best fell by more than ``tolerance`` in the last
        ``tail`` share of the epochs. The second test suits a learning rate that does not decay to almost
        nothing (the GAN attack's); after a cosine decay to its floor every run improves in its last
        epochs, converged or not (docs/attacks.md), which is why the decoder attack runs the first.
        """
        if self.started_from is not None and self.started_from.still_improving(tail, tolerance):
            return True
        if self.half_budget is not None:
            return self.half_budget.gain > tolerance
        val = self.val_curve()
        if len(val) < 2:
            return False
        cut = len(val) - max(1, round(tail * len(val)))
        before, best = min(val[:cut]), min(val)
        return (before - best) / max(best, 1e-12) > tolerance


def inversion_config_for(split: AttackSplit, *, num_blocks: int, channels: int) -> InversionConfig:
    """Decoding-network shape for this split's features and images."""
    images = split.fit.images
    c, h, w = (int(d) for d in split.fit.features.shape[1:])  # features (N, C, H, W)
    return InversionConfig.for_features(
        (c, h, w), int(images.shape[1]), int(images.shape[-1]), num_blocks=num_blocks, channels=channels
    )


def create_seeded_network(config: InversionConfig, seed: int, device: torch.device) -> InversionNetwork:
    """A freshly initialised network whose weights depend only on ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = InversionNetwork(config)
    return network.to(device).to(memory_format=ATTACK_MEMORY_FORMAT)


def in_attack_layout(features: torch.Tensor) -> torch.Tensor:
    """``features`` (N, C, H, W) in the decoding networks' memory layout (same values)."""
    return features.contiguous(memory_format=ATTACK_MEMORY_FORMAT)


def iterate_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Shuffled index batches over ``range(n)``; the last one may be smaller."""
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def count_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def effective_batch_size(n: int, batch_size: int, min_steps_per_epoch: int, min_batch_size: int = 1) -> int:
    """``batch_size``, shrunk so that ``n`` images give at least ``min_steps_per_epoch`` steps (0: never shrink),
    but never below ``min_batch_size`` (nor above ``batch_size``).

    At the paper's scale (tens of thousands of images) this is ``batch_size``; on small attacker sets
    (digits' ``infer`` column: 436 images, 2 steps per epoch at 256) a fixed 256 leaves the attack
    badly under-trained (docs/attacks.md).
    """
    if min_steps_per_epoch <= 0:
        return batch_size
    return max(1, min(batch_size, max(min_batch_size, n // min_steps_per_epoch)))


class CheckpointKeeper:
    """Keeps an in-memory copy of the weights with the lowest validation MSE.

    Without validation data (``val_fraction=0``) every offer wins, so the last epoch is kept.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network
        self.best_epoch = 0
        self.best_mse = float("inf")
        self._state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, val_mse: float | None) -> None:
        if val_mse is None or val_mse <= self.best_mse:
            self.best_epoch = epoch
            self.best_mse = float("inf") if val_mse is None else val_mse
            self._state = copy.deepcopy(self.network.state_dict())

    def snapshot(self) -> tuple[int, float, dict[str, torch.Tensor] | None]:
        """(best epoch, its validation MSE, its weights or None before any offer): what ``resume`` takes back."""
        return self.best_epoch, self.best_mse, self._state

    def resume(self, best_epoch: int, best_mse: float, state: dict[str, torch.Tensor] | None) -> None:
        """Continue from a ``snapshot`` (a run restored from disk)."""
        self.best_epoch, self.best_mse, self._state = best_epoch, best_mse, state

    def restore(self) -> None:
        if self._state is not None:
            self.network.load_state_dict(self._state)
        self.network.eval()
