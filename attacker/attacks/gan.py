"""GAN-based model inversion (paper [68] + S.3, reference_notes §5.2).

The generator is the decoding network (features -> image), by default
initialised from a decoder attack on the same data, as in the reference, so the
GAN attack fine-tunes the decoder attack. The critic is the WGAN-GP
``WassersteinCritic`` (DGWGAN32) judging real images against reconstructions.

* critic loss  = mean D(G(z)) - mean D(x) + 10 * GP, with the gradient penalty
  (||grad D(x_hat)||_2 - 1)^2 on random per-sample interpolates x_hat;
* generator loss = -mean D(G(z)) + 1500 * MSE(G(z), x), the paper's MSE term;
* every batch trains the critic (generator in eval mode); every ``n_critic``-th
  global batch (10) also trains the generator (train mode), as in the reference;
* Adam, critic lr 5e-3, generator lr 5e-4, betas (0.5, 0.999); cosine decay with
  a period of twice the epoch count (the reference's T_max 300 for 150 epochs);
  batch 128 (shrunk on small attacker sets so an epoch has at least 16 steps,
  as in the decoder attack), 150 epochs.

On digits an epoch has 16-17 batches, so at n_critic 10 the generator gets about
1.6 updates per epoch; ``n_critic`` is configurable. The returned
generator is the epoch (0 = the initial network) with the lowest MSE on the
attacker's validation images, so the GAN attack can never score worse on
validation than the decoder attack it starts from.

With a ``RunEntry`` (``attacker.attacks.resume``, which ``run_attack`` passes when the disk cache is on) the
whole training state is saved every few minutes, and the selected generator with its history once finished; a
run that finds a saved state continues from its epoch (or returns the finished run): an interrupted GAN attack
loses minutes, not the run.

Data-parallel (``distributed``): the batch is the global batch; each rank runs the
critic and the generator on its slice and the gradients of both are averaged over the
ranks after each backward (``attacker.attacks.parallel`` says why by hand rather than
under DistributedDataParallel).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attacker.attacks.data import AttackSplit
from attacker.attacks.evaluate import measure_mse
from attacker.attacks.loop import (
    CheckpointKeeper,
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
from attacker.attacks.resume import RunEntry, module_tensors, optimizer_tensors, save_trained, trained_from
from attacker.attacks.saved_state import (
    EntryMismatch,
    Tensors,
    adam_state,
    check_best,
    check_history,
    check_int,
    check_like,
    check_random_state,
    tensors_under,
)
from cem.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_sum,
    average_gradients,
    broadcast_buffers,
    broadcast_module,
)
from cem.errors import ConfigError
from cem.models import CriticConfig, InversionNetwork, WassersteinCritic
from cem.obfuscation import ObfuscationConfig, obfuscate


@dataclass(frozen=True)
class GanAttackConfig:
    epochs: int = 150
    batch_size: int = 128
    min_steps_per_epoch: int = 16
    generator_lr: float = 5e-4
    critic_lr: float = 5e-3
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 10
    gp_weight: float = 10.0
    mse_weight: float = 1500.0
    lr_period_factor: float = 2.0
    critic_dim: int = 64
    num_blocks: int = 8
    channels: int = 64

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.n_critic < 1:
            raise ConfigError(
                f"expected epochs, batch_size and n_critic >= 1, got {self.epochs}, {self.batch_size}, {self.n_critic}"
            )
        if self.min_steps_per_epoch < 0:
            raise ConfigError(f"expected min_steps_per_epoch >= 0, got {self.min_steps_per_epoch}")
        if self.generator_lr <= 0 or self.critic_lr <= 0:
            raise ConfigError(f"expected positive learning rates, got {self.generator_lr} and {self.critic_lr}")
        if self.gp_weight < 0 or self.mse_weight < 0 or self.lr_period_factor < 1:
            raise ConfigError(
                "expected gp_weight, mse_weight >= 0 and lr_period_factor >= 1, got "
                f"{self.gp_weight}, {self.mse_weight}, {self.lr_period_factor}"
            )


def gradient_penalty(
    critic: WassersteinCritic, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """WGAN-GP term: mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2, x_hat on the real-fake segment."""
    alpha = torch.rand((real.shape[0], 1, 1, 1), generator=generator, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_step(
    critic: WassersteinCritic, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
    config: GanAttackConfig, generator: torch.Generator, *, weight: float = 1.0,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> torch.Tensor:
    """One critic update on a batch; ``fake`` is detached. Returns the (detached) critic loss, times ``weight``.

    Data-parallel: ``real``/``fake`` are this rank's slice, ``weight`` its ``shard_weight``, and the critic's
    gradients are averaged over the ranks before the step (an empty slice adds a zero gradient)."""
    critic.requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=real.device)
    if real.shape[0]:
        loss = weight * (
            critic(fake).mean() - critic(real).mean()
            + config.gp_weight * gradient_penalty(critic, real, fake, generator)
        )
        loss.backward()
    average_gradients(critic, distributed)
    optimizer.step()
    return loss.detach()


def generator_step(
    network: InversionNetwork, critic: WassersteinCritic, optimizer: torch.optim.Optimizer, z: torch.Tensor,
    real: torch.Tensor, config: GanAttackConfig, *, weight: float = 1.0,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> torch.Tensor:
    """One generator update (train mode, critic frozen). Returns the (detached) generator loss, times ``weight``.

    Data-parallel as ``critic_step``; afterwards every rank holds rank 0's BatchNorm statistics."""
    network.train()
    critic.requires_grad_(False)
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=real.device)
    if z.shape[0]:
        fake = network(z)
        loss = weight * (-critic(fake).mean() + config.mse_weight * F.mse_loss(fake, real))
        loss.backward()
    average_gradients(network, distributed)
    optimizer.step()
    broadcast_buffers(network, distributed)
    return loss.detach()


def train_gan_attack(
    split: AttackSplit,
    obfuscation: ObfuscationConfig,
    config: GanAttackConfig = GanAttackConfig(),
    *,
    init: InversionNetwork | None = None,
    seed: int = 0,
    monitor: ProgressMonitor | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    entry: RunEntry | None = None,
) -> TrainedAttack:
    """Fine-tune ``init`` (a copy; or a fresh network) adversarially on ``split.fit``; ``distributed``:
    data-parallel over its ranks (module docstring), every rank returning the same generator; ``entry``: where
    the run's state is saved and resumed from (module docstring; single process only)."""
    monitor = monitor or ProgressMonitor()
    device = split.fit.features.device
    fresh = inversion_config_for(split, num_blocks=config.num_blocks, channels=config.channels)
    generator = create_seeded_network(init.config if init is not None else fresh, seed, device)
    if init is not None:
        generator.load_state_dict(init.state_dict())
    val_seed = seed + 3
    has_val = len(split.val) > 0
    initial = (measure_mse(generator, split.val, obfuscation, seed=val_seed, distributed=distributed)
               if init is not None and has_val else None)  # epoch 0: the generator it starts from
    saved = entry.load() if entry is not None else None
    if entry is not None and saved is not None and saved[1].get("finished"):
        try:
            finished = trained_from(*saved, generator, epochs=config.epochs, has_val=has_val, initial=initial)
        except EntryMismatch as exc:
            entry.ignore(str(exc))
            saved = None
        else:
            finished.resumed_epochs = config.epochs
            monitor.report(1.0, "GAN attack: the finished run loaded from the cache")
            return finished
    images = split.fit.images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 4)
        critic_config = CriticConfig(int(images.shape[1]), int(images.shape[-1]), config.critic_dim)
        critic = WassersteinCritic(critic_config).to(device)
    broadcast_module(generator, distributed)  # seeded alike on every rank; DDP's start, made sure of
    broadcast_module(critic, distributed)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.generator_lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.critic_lr, betas=betas)
    period = max(1, round(config.lr_period_factor * config.epochs))
    noise = torch.Generator(device=device).manual_seed(distributed.seed(seed + 1))  # rank 0: seed + 1
    shuffle = torch.Generator().manual_seed(seed + 2)
    keeper = CheckpointKeeper(generator)
    if init is not None:
        keeper.offer(0, initial)
    result = TrainedAttack(generator)
    batch_size = effective_batch_size(len(split.fit), config.batch_size, config.min_steps_per_epoch)
    n_batches = count_batches(len(split.fit), batch_size)
    step = 0
    state = _GanState(generator, critic, opt_g, opt_d, noise, shuffle, keeper, result)
    first_epoch = 1
    if entry is not None and saved is not None:
        try:
            first_epoch, step = state.restore(*saved, epochs=config.epochs, steps_per_epoch=n_batches,
                                          n_critic=config.n_critic, has_val=has_val, initial=initial)
        except EntryMismatch as exc:
            entry.ignore(str(exc))
        else:
            result.resumed_epochs = first_epoch - 1
            _decay_learning_rates(opt_g, opt_d, config, result.resumed_epochs, period)  # the schedule's, not saved
            monitor.report(result.resumed_epochs / config.epochs,
                           f"GAN attack: resumed after epoch {result.resumed_epochs}/{config.epochs}")
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        sums = torch.zeros(3, device=device)  # critic loss, generator loss, generator steps
        for b, rows in enumerate(iterate_batches(len(split.fit), batch_size, shuffle, device)):  # global batches
            monitor.check()
            mine = shard_rows(rows, distributed)
            weight = shard_weight(mine.numel(), rows.numel(), distributed)
            real = images[mine]
            z = in_attack_layout(obfuscate(split.fit.features[mine], obfuscation, noise))
            generator.eval()
            with torch.no_grad():
                fake = generator(z)
            sums[0] += critic_step(critic, opt_d, real, fake, config, noise, weight=weight, distributed=distributed)
            step += 1
            if step % config.n_critic == 0:
                sums[1] += generator_step(generator, critic, opt_g, z, real, config, weight=weight,
                                          distributed=distributed)
                sums[2] += 1
            monitor.report(
                (epoch - 1 + (b + 1) / n_batches) / config.epochs, f"GAN attack: epoch {epoch}/{config.epochs}"
            )
        _decay_learning_rates(opt_g, opt_d, config, epoch, period)
        val_mse = (measure_mse(generator, split.val, obfuscation, seed=val_seed, distributed=distributed)
                   if has_val else None)
        keeper.offer(epoch, val_mse)
        if distributed.enabled:  # the ranks' weighted losses add up to W times the global batches' losses
            all_reduce_sum(sums[:2], distributed).div_(distributed.world_size)
        critic_loss_mean, gen_loss_sum, gen_steps = (float(v) for v in sums)
        result.history.append({
            "epoch": epoch,
            "critic_loss": critic_loss_mean / n_batches,
            "generator_loss": gen_loss_sum / gen_steps if gen_steps else None,
            "generator_steps": gen_steps,
            "val_mse": val_mse,
            "epoch_s": time.perf_counter() - started,
        })
        if entry is not None and epoch < config.epochs and entry.due():
            entry.save(*state.snapshot(epoch, step), progress=epoch)
    keeper.restore()
    result.best_epoch = keeper.best_epoch
    if entry is not None:  # the selected generator and the history: all a rerun needs
        save_trained(entry, result, None if math.isinf(keeper.best_mse) else keeper.best_mse)
    return result


def _decay_learning_rates(opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, config: GanAttackConfig,
                          epoch: int, period: int) -> None:
    """The learning rates after ``epoch`` epochs: cosine decay per epoch, set directly (with few batches an epoch
    may have no generator step, which torch's schedulers warn about)."""
    decay = 0.5 * (1 + math.cos(math.pi * epoch / period))
    for optimizer, lr in ((opt_g, config.generator_lr), (opt_d, config.critic_lr)):
        for group in optimizer.param_groups:
            group["lr"] = lr * decay


@dataclass
class _GanState:
    """Everything a GAN run carries from one epoch to the next, to save and restore it (a ``RunEntry``)."""

    generator: InversionNetwork
    critic: WassersteinCritic
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator
    shuffle: torch.Generator
    keeper: CheckpointKeeper
    result: TrainedAttack

    def snapshot(self, epoch: int, step: int) -> tuple[Tensors, dict[str, Any]]:
        """(tensors, JSON state) after ``epoch`` with ``step`` global batches done."""
        best_epoch, best_mse, best_state = self.keeper.snapshot()
        g_tensors, g_rest = optimizer_tensors("opt_g", self.opt_g)
        d_tensors, d_rest = optimizer_tensors("opt_d", self.opt_d)
        tensors = {**module_tensors("generator", self.generator), **module_tensors("critic", self.critic),
                   **g_tensors, **d_tensors, "rng.noise": self.noise.get_state(),
                   "rng.shuffle": self.shuffle.get_state(), **{f"best.{k}": v for k, v in (best_state or {}).items()}}
        state = {"epoch": epoch, "step": step, "opt_g": g_rest, "opt_d": d_rest, "best_epoch": best_epoch,
                 "best_mse": best_mse, "history": self.result.history}
        return tensors, state

    def restore(self, tensors: Tensors, state: dict[str, Any], *, epochs: int, steps_per_epoch: int, n_critic: int,
                has_val: bool, initial: float | None) -> tuple[int, int]:
        """Load a ``snapshot`` taken after an epoch of a run of ``epochs`` epochs of ``steps_per_epoch`` global
        steps; returns (the next epoch to train, the global step). Everything is checked first
        (``attacker.attacks.saved_state``): on ``EntryMismatch`` nothing was loaded. The learning rates are the
        schedule's, for the caller to set."""
        epoch = check_int("epoch", state.get("epoch"), 1, epochs)
        step = epoch * steps_per_epoch
        if state.get("step") != step:
            raise EntryMismatch(f"step: saved {str(state.get('step'))[:40]}, {epoch} epochs take {step}")
        check_like("generator", tensors_under("generator", tensors), self.generator.state_dict())
        check_like("critic", tensors_under("critic", tensors), self.critic.state_dict())
        best = tensors_under("best", tensors)
        check_like("best", best, self.generator.state_dict())
        opt_g = adam_state(self.opt_g, "opt_g", tensors, state.get("opt_g"), step // n_critic)
        opt_d = adam_state(self.opt_d, "opt_d", tensors, state.get("opt_d"), step)
        noise = check_random_state("rng.noise", tensors.get("rng.noise"), self.noise)
        shuffle = check_random_state("rng.shuffle", tensors.get("rng.shuffle"), self.shuffle)
        history = check_history(state.get("history"), epoch, has_val=has_val)
        best_epoch, best_mse = check_best(history, state.get("best_epoch"), state.get("best_mse"), initial)
        self.generator.load_state_dict(tensors_under("generator", tensors))
        self.critic.load_state_dict(tensors_under("critic", tensors))
        self.opt_g.load_state_dict(opt_g)
        self.opt_d.load_state_dict(opt_d)
        self.noise.set_state(noise)
        self.shuffle.set_state(shuffle)
        device = next(self.generator.parameters()).device
        self.keeper.resume(best_epoch, best_mse, {k: v.to(device) for k, v in best.items()})
        self.result.history = list(history)
        return epoch + 1, step
