"""The per-epoch loops: one SGD pass, evaluation, and a feature pass.

Every loop applies the client transform through ``cem.obfuscation.obfuscate``,
so the decoder trains on, and is evaluated on, exactly the tensor the edge
sends. ``train_one_epoch`` takes any ``DefenseStack`` and an optional
``CEMRegularizer``; neither knows about the other.

Under data parallelism (``training.data_parallel``) the same loop runs on every
rank with ``step`` wrapped in DDP; L_C, the defense losses and the feature cache
take the gathered global batch (``training.distributed.GlobalBatch``), and the
returned statistics are summed over the ranks. On one process every gather is
the identity, so nothing changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cem.distributed import SINGLE_PROCESS, DistributedContext, all_reduce_sum
from cem.errors import ConfigError
from cem.models import SplitModel
from cem.obfuscation import ObfuscationConfig, obfuscate
from training.cem_plugin import CEMRegularizer
from training.defenses import DefenseStack
from training.distributed import EpochCursor
from training.ressfl import ProxyAdversary, adversarial_terms


class FeatureCache:
    """One epoch of detached features and labels, for the mixture refit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.size = 0

    def add(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        flat = z.detach().flatten(1)
        if self.features is None or self.labels is None:
            self.features = flat.new_empty((self.capacity, flat.shape[1]))
            self.labels = labels.new_empty((self.capacity,))
        end = self.size + flat.shape[0]
        self.features[self.size : end] = flat
        self.labels[self.size : end] = labels
        self.size = end

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is None or self.labels is None:
            raise ConfigError("expected at least one cached batch, got none")
        return self.features[: self.size], self.labels[: self.size]

    def clear(self) -> None:
        self.size = 0


def split_obfuscation(config: ObfuscationConfig) -> tuple[ObfuscationConfig, ObfuscationConfig]:
    """(noise only, everything after the noise): applying both in turn equals ``obfuscate(z, config)``."""
    return ObfuscationConfig(noise_std=config.noise_std), dataclasses.replace(config, noise_std=0.0)


class SplitStep(nn.Module):
    """encoder -> noise -> the other client transforms -> decoder, as one forward, so that DDP
    (which hooks a module's ``forward``) can wrap the whole training step.

    ``forward(x, generator)`` -> (z clean (B, C, H, W) in (0, 1), z + noise, the sent tensor, logits (B, classes)).
    """

    def __init__(self, model: SplitModel, obfuscation: ObfuscationConfig) -> None:
        super().__init__()
        self.model = model
        self.noise_only, self.after_noise = split_obfuscation(obfuscation)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.model.encoder(x)  # (B, C, H, W) in (0, 1)
        noisy = obfuscate(z, self.noise_only, generator)
        sent = obfuscate(noisy, self.after_noise, generator)  # what the decoder, the server and a tap receive
        return z, noisy, sent, self.model.decoder(sent)


def train_one_epoch(
    model: SplitModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    obfuscation: ObfuscationConfig,
    defenses: DefenseStack,
    cem: CEMRegularizer | None,
    cem_weight: float,
    generator: torch.Generator,
    device: torch.device,
    cache: FeatureCache | None = None,
    adversaries: Sequence[ProxyAdversary] = (),
    step: nn.Module | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> dict[str, float]:
    """One SGD pass. L_C is evaluated on the clean or noisy z as ``cem.config.evaluate_on`` says.

    Each adversary (ResSFL's proxy) takes one step on the batch's sent features before the
    model's step, and its penalty joins the single backward; then the epoch's stats also hold
    ``proxy_ssim`` and ``proxy_penalty`` (batch means).

    ``step``: the forward to use, ``SplitStep(model, obfuscation)`` or that wrapped in DDP
    (default: a plain ``SplitStep``). ``distributed``: the ranks sharing the epoch; ``loader``
    then yields this rank's shard, and the cache receives the global batch.
    """
    model.train()
    forward = step if step is not None else SplitStep(model, obfuscation)
    on_noisy = cem is not None and cem.config.evaluate_on == "noisy"
    cursor = EpochCursor(distributed, len(loader.dataset))  # type: ignore[arg-type]  # map-style data sets are Sized
    # task loss, L_C, correct, samples, proxy SSIM, proxy penalty: summed on the device (no host sync per batch)
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        batch = cursor.next_batch(y.shape[0])
        z, noisy, sent, logits = forward(x, generator)
        loss = F.cross_entropy(logits, y)
        total = loss
        if defenses.has_loss:  # whole-batch losses (distance correlation) see the global batch
            defense_loss = defenses.loss(batch.gather(x), batch.gather(z))
            if defense_loss is not None:
                total = total + defense_loss
        adversarial = adversarial_terms(adversaries, x, sent)
        if adversarial is not None:
            total = total + adversarial[0]
            totals[4] += adversarial[1].double()
            totals[5] += adversarial[0].detach().double()
        cem_z = noisy if on_noisy else z
        cem_loss = torch.zeros((), device=device)
        training_cem = cem is not None and cem_weight > 0
        if training_cem or cache is not None:  # Eq. 5-6 and the refit see the global batch
            cem_z, cem_y = batch.gather(cem_z if training_cem else cem_z.detach()), batch.gather(y)
            if cem is not None and training_cem:
                cem_loss = cem.loss(cem_z, cem_y)
                total = total + cem_weight * cem_loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if cache is not None:
            cache.add(cem_z, cem_y)
        local_size = float(y.shape[0])
        totals[0] += loss.detach().double() * local_size
        totals[1] += cem_loss.detach().double()
        totals[2] += (logits.detach().argmax(1) == y).sum().double()
        totals[3] += local_size
    n_batches = max(len(loader), 1)
    all_reduce_sum(totals, distributed)
    totals[[1, 4, 5]] /= distributed.world_size  # per-batch means (L_C is the same on every rank): mean over ranks
    totals = totals.cpu()
    stats = {
        "train_loss": float(totals[0] / totals[3]),
        "cem_loss": float(totals[1] / n_batches),
        "train_accuracy": float(totals[2] / totals[3]),
    }
    if adversaries:
        stats |= {"proxy_ssim": float(totals[4] / n_batches), "proxy_penalty": float(totals[5] / n_batches)}
    return stats


@torch.no_grad()
def evaluate(
    model: SplitModel,
    loader: DataLoader,
    obfuscation: ObfuscationConfig,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """Accuracy with the client transform (noise, dropout, top-k) applied, as in service."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model.decoder(obfuscate(model.encoder(x), obfuscation, generator))
        correct += int((logits.argmax(1) == y).sum())
        seen += y.shape[0]
    return correct / max(seen, 1)


@torch.no_grad()
def collect_features(
    model: SplitModel,
    loader: DataLoader,
    noise: ObfuscationConfig | None,
    generator: torch.Generator,
    device: torch.device,
    on_images: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode features of a whole split: (N, D) (noisy when ``noise`` is given) and labels (N,).

    ``on_images`` sees every input batch, so data statistics need no second pass.
    """
    model.eval()
    cache = FeatureCache(len(loader.dataset))  # type: ignore[arg-type]
    for x, y in loader:
        if on_images is not None:
            on_images(x)
        z = model.encoder(x.to(device))
        cache.add(obfuscate(z, noise, generator) if noise is not None else z, y.to(device))
    return cache.tensors()
