"""Decoder-based model inversion (paper S.3, reference_notes §5.1).

The attacker trains the decoding network to map transmitted features back to
images with an MSE loss on [0, 1] pixels. Each batch gets a fresh draw of the
client transform (noise-aware attacker). Adam, 50 epochs, one epoch of linear
learning-rate warm-up, then a cosine decay per step (attacker.attacks.schedule;
``schedule="wsd"``: the peak rate, then a cosine decay over the last fifth);
batch 256, shrunk on small attacker sets so an epoch has at least 64 steps but
never below 16 (``min_steps_per_epoch``, ``min_batch_size``; digits: batch 17
for the ``train`` column and 16 for ``infer``; at CIFAR scale it stays 256).
On digits at σ 0.1 the warm-up and the smaller batches took the paper's network
from a held-out validation MSE of 0.00138 to 0.00081 at 12 epochs (docs/attacks.md).

Learning rate: 5e-3, the paper's value (the reference code's ``MIA_lr`` default
is 1e-3). On digits features at σ 0.1, 20 epochs reached a held-out MSE of
0.0137 at 5e-3 against 0.0248 at 1e-3 (docs/attacks.md), and a privacy audit
should use the stronger attacker. Weight decay 1e-4 and a cosine floor of 1e-5
follow the reference. The returned network is the epoch with the lowest
MSE on the attacker's own validation images.

Convergence check (``convergence_check``, on by default): the attack first runs
with half its epochs, then with all of them, from the same seed; if doubling the
epochs lowered the best validation MSE by more than 2 %, the attack is flagged as
still improving (``TrainedAttack.still_improving``). It costs half a run more
(under ``wsd`` a tenth: the half run branches off the full one before its decay);
it is there because after a decay to the floor every run's last epochs improve,
so the curve of one run cannot say whether more epochs would help. The stronger
of the two runs on validation is returned.

Minimum steps (``min_steps``, 0 by default: the epochs are as given): the budget is
in epochs, and on small attacker sets an epoch has few optimizer steps, so the
same epochs under-train the column with fewer images. With ``min_steps`` the
epochs are raised until the run takes at least that many optimizer steps (one
epoch runs ``steps_per_epoch``), before the convergence check halves them. On
digits (Bottleneck σ 0.1 λ 0, 16 channels, 4 blocks) 100 epochs converged the
``train`` column (1,132 images, 67 steps an epoch; doubling gain 0.8-1.2 %) but
not ``infer`` (437 images, 28 steps; gain 14.7 %), which 200 epochs converged
(gain 0.9 %); docs/attacks.md.

Data-parallel (``distributed``, under ``cem-attack --nproc N`` or torchrun): the batch
size is the global batch and every rank trains on its slice of it, the gradients
averaged over the ranks (``attacker.attacks.parallel``); the learning rate and
schedule are unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacker.attack_names import SCHEDULES, Schedule
from attacker.attacks.data import AttackSplit
from attacker.attacks.evaluate import measure_mse
from attacker.attacks.loop import (
    CheckpointKeeper,
    HalfBudgetCheck,
    TrainedAttack,
    count_batches,
    create_seeded_network,
    effective_batch_size,
    in_attack_layout,
    inversion_config_for,
    iterate_batches,
)
from attacker.attacks.monitor import ProgressMonitor
from attacker.attacks.parallel import shard_rows, shard_weight
from attacker.attacks.schedule import WSD, LrFactor, warmup_cosine, warmup_stable_decay
from cem.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_sum,
    average_gradients,
    broadcast_buffers,
    broadcast_module,
)
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig, obfuscate


@dataclass(frozen=True)
class DecoderAttackConfig:
    epochs: int = 50
    batch_size: int = 256
    min_steps_per_epoch: int = 64
    min_batch_size: int = 16
    lr: float = 5e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    convergence_check: bool = True
    num_blocks: int = 8
    channels: int = 64
    min_steps: int = 0  # the epochs are raised until the run takes this many optimizer steps; 0: epochs as given
    schedule: Schedule = "cosine"  # attacker.attacks.schedule
    decay_fraction: float = 0.2  # wsd: the share of the epochs in the final decay

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.min_batch_size < 1:
            raise ConfigError(
                f"expected epochs, batch_size and min_batch_size >= 1, got {self.epochs}, {self.batch_size} "
                f"and {self.min_batch_size}"
            )
        if self.min_steps_per_epoch < 0 or self.min_steps < 0:
            raise ConfigError(f"expected min_steps_per_epoch and min_steps >= 0, got {self.min_steps_per_epoch} "
                              f"and {self.min_steps}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"expected warmup_epochs >= 0, got {self.warmup_epochs}")
        if not 0 < self.min_lr <= self.lr:
            raise ConfigError(f"expected 0 < min_lr <= lr, got min_lr {self.min_lr} and lr {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"expected weight_decay >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"expected a schedule in {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"expected 0 < decay_fraction <= 1, got {self.decay_fraction}")


def train_decoder_attack(
    split: AttackSplit,
    obfuscation: ObfuscationConfig,
    config: DecoderAttackConfig = DecoderAttackConfig(),
    *,
    seed: int = 0,
    monitor: ProgressMonitor | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> TrainedAttack:
    """Train a decoding network on ``split.fit``; keep the epoch with the lowest ``split.val`` MSE.

    The epochs are first raised to ``config.min_steps`` optimizer steps (``resolved_epochs``). With
    ``config.convergence_check`` (and validation data and at least two of those epochs) the attack also runs with
    half the epochs: as a run of its own under ``cosine``, as a branch of the full run under ``wsd``; the
    stronger on validation is returned, carrying the comparison (``TrainedAttack.half_budget``).
    ``distributed``: data-parallel over its ranks (module docstring); every rank returns the same network.
    """
    config = dataclasses.replace(config, epochs=resolved_epochs(len(split.fit), config))
    monitor = monitor or ProgressMonitor()
    if not (config.convergence_check and config.epochs >= 2 and len(split.val)):
        run = _Trajectory(split, obfuscation, config, seed, distributed)
        run.advance(config.epochs, _lr_factor(config, config.epochs, run.steps_per_epoch), monitor, "decoder attack")
        return run.finish()
    half = config.epochs // 2
    if config.schedule == WSD:
        shorter, full = _branched_runs(split, obfuscation, config, half, seed, monitor, distributed)
    else:
        share = half / (half + config.epochs)
        shorter = _Trajectory(split, obfuscation, dataclasses.replace(config, epochs=half), seed, distributed)
        shorter.advance(half, _lr_factor(config, half, shorter.steps_per_epoch), monitor.child(0.0, share),
                        "decoder attack, half budget")
        full = _Trajectory(split, obfuscation, config, seed, distributed)
        full.advance(config.epochs, _lr_factor(config, config.epochs, full.steps_per_epoch),
                     monitor.child(share, 1.0 - share), "decoder attack")
    half_attack, full_attack = shorter.finish(), full.finish()
    half_mse, full_mse = half_attack.best_val_mse(), full_attack.best_val_mse()
    assert half_mse is not None and full_mse is not None  # both ran with validation data
    stronger = full_attack if full_mse <= half_mse else half_attack
    stronger.half_budget = HalfBudgetCheck(half, half_mse, full_mse)
    return stronger


def decay_epochs(epochs: int, config: DecoderAttackConfig) -> int:
    """The epochs of ``wsd``'s final decay in a run of ``epochs``: ``config.decay_fraction`` of them, at least one."""
    return min(epochs, max(1, round(config.decay_fraction * epochs)))


def _branched_runs(
    split: AttackSplit, obfuscation: ObfuscationConfig, config: DecoderAttackConfig, half: int, seed: int,
    monitor: ProgressMonitor, distributed: DistributedContext,
) -> tuple[_Trajectory, _Trajectory]:
    """The half-budget and the full ``wsd`` runs as one trajectory and a branch: the epochs before the half run's
    decay are shared, the half run decays from a copy of that point, the full run goes on from it."""
    shared = half - decay_epochs(half, config)
    work = config.epochs + decay_epochs(half, config)  # epochs trained in all
    run = _Trajectory(split, obfuscation, config, seed, distributed)
    full_factor = _lr_factor(config, config.epochs, run.steps_per_epoch)
    run.advance(shared, full_factor, monitor.child(0.0, shared / work), "decoder attack")
    branch = run.copy(epochs=half)
    branch.advance(half, _lr_factor(config, half, run.steps_per_epoch),
                   monitor.child(shared / work, (half - shared) / work), "decoder attack, half budget")
    run.advance(config.epochs, full_factor, monitor.child(half / work, 1.0 - half / work), "decoder attack")
    return branch, run


def _lr_factor(config: DecoderAttackConfig, epochs: int, steps_per_epoch: int) -> LrFactor:
    """``config.schedule`` for a run of ``epochs`` (one epoch of warm-up by default)."""
    total = epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    floor = config.min_lr / config.lr
    if config.schedule == WSD:
        return warmup_stable_decay(total_steps=total, warmup_steps=warmup,
                                   decay_steps=decay_epochs(epochs, config) * steps_per_epoch, floor=floor)
    return warmup_cosine(total_steps=total, warmup_steps=warmup, floor=floor)


def steps_per_epoch(n_fit: int, config: DecoderAttackConfig) -> int:
    """The optimizer steps one epoch takes on ``n_fit`` images: one per global batch (the batch rule's), the same
    on every rank of a data-parallel run."""
    batch_size = effective_batch_size(n_fit, config.batch_size, config.min_steps_per_epoch, config.min_batch_size)
    return count_batches(n_fit, batch_size)


def resolved_epochs(n_fit: int, config: DecoderAttackConfig) -> int:
    """``config.epochs``, raised until a run on ``n_fit`` images takes at least ``config.min_steps`` optimizer
    steps (module docstring: small attacker sets)."""
    if config.min_steps == 0:
        return config.epochs
    return max(config.epochs, count_batches(config.min_steps, steps_per_epoch(n_fit, config)))


class _Trajectory:
    """One decoder-attack run advanced epoch by epoch: the network, its optimizer, the noise and shuffling
    streams, the best checkpoint and the history. ``copy`` branches it (``wsd``'s half-budget run)."""

    def __init__(self, split: AttackSplit, obfuscation: ObfuscationConfig, config: DecoderAttackConfig, seed: int,
                 distributed: DistributedContext) -> None:
        self.split, self.obfuscation, self.config, self.seed, self.distributed = (
            split, obfuscation, config, seed, distributed)
        device = split.fit.features.device
        self.network = create_seeded_network(
            inversion_config_for(split, num_blocks=config.num_blocks, channels=config.channels), seed, device
        )
        broadcast_module(self.network, distributed)  # the same seed built the same weights; DDP's start, made sure of
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.noise = torch.Generator(device=device).manual_seed(distributed.seed(seed + 1))  # rank 0: seed + 1
        self.shuffle = torch.Generator().manual_seed(seed + 2)
        self.keeper = CheckpointKeeper(self.network)
        self.history: list[dict[str, float | None]] = []
        self.batch_size = effective_batch_size(
            len(split.fit), config.batch_size, config.min_steps_per_epoch, config.min_batch_size
        )
        self.steps_per_epoch = steps_per_epoch(len(split.fit), config)
        self.epoch = 0

    def copy(self, *, epochs: int) -> _Trajectory:
        """An independent run in exactly this state, to end after ``epochs``: trained on, it does what this one
        would have done."""
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, epochs=epochs)
        twin.network = copy.deepcopy(self.network)
        twin.optimizer = torch.optim.Adam(twin.network.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)
        twin.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        twin.noise = torch.Generator(device=self.noise.device).set_state(self.noise.get_state())
        twin.shuffle = torch.Generator().set_state(self.shuffle.get_state())
        twin.keeper = self.keeper.copy_for(twin.network)
        twin.history = list(self.history)
        return twin

    def advance(self, until_epoch: int, factor: LrFactor, monitor: ProgressMonitor, label: str) -> None:
        """Train epochs ``self.epoch + 1`` to ``until_epoch``, the learning rate set by ``factor`` at every step;
        ``monitor`` sees this stretch as its whole."""
        split, distributed, network = self.split, self.distributed, self.network
        device = split.fit.features.device
        first, n_batches = self.epoch, self.steps_per_epoch
        for epoch in range(first + 1, until_epoch + 1):
            started = time.perf_counter()
            network.train()
            loss_sum = torch.zeros((), device=device)  # this rank's sum of per-image MSE
            for b, rows in enumerate(iterate_batches(len(split.fit), self.batch_size, self.shuffle, device)):
                monitor.check()
                lr = self.config.lr * factor((epoch - 1) * n_batches + b)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                mine = shard_rows(rows, distributed)
                self.optimizer.zero_grad(set_to_none=True)
                if mine.numel():  # a last batch smaller than the world leaves some ranks without rows
                    z = in_attack_layout(obfuscate(split.fit.features[mine], self.obfuscation, self.noise))
                    weight = shard_weight(mine.numel(), rows.numel(), distributed)
                    loss = F.mse_loss(network(z), split.fit.images[mine]) * weight
                    loss.backward()
                    loss_sum += loss.detach() * (rows.numel() / distributed.world_size)
                average_gradients(network, distributed)
                self.optimizer.step()
                broadcast_buffers(network, distributed)
                monitor.report((epoch - 1 - first + (b + 1) / n_batches) / (until_epoch - first),
                               f"{label}: epoch {epoch}/{self.config.epochs}")
            val_mse = (measure_mse(network, split.val, self.obfuscation, seed=self.seed + 3, distributed=distributed)
                       if len(split.val) else None)
            self.keeper.offer(epoch, val_mse)
            self.history.append({
                "epoch": epoch, "train_mse": float(all_reduce_sum(loss_sum, distributed)) / len(split.fit),
                "val_mse": val_mse, "epoch_s": time.perf_counter() - started,
            })
            self.epoch = epoch

    def finish(self) -> TrainedAttack:
        """The run's best epoch, restored into its network (eval mode), with its history."""
        self.keeper.restore()
        return TrainedAttack(self.network, history=self.history, best_epoch=self.keeper.best_epoch)
