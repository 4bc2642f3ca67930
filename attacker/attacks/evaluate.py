"""Scoring an inversion network on held-out images.

The network runs in eval mode under ``no_grad`` (the reference ran its "test"
batches in train mode and let them update BN statistics, B5). Features get a
fresh client transform per batch, drawn from a generator seeded for the
evaluation, so a score is reproducible and every epoch's validation sees the
same noise draws. Given an evaluation classifier (``attacker.attacks.identity``), the score also
says whether the reconstructions are still recognisable: the attack accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from attacker.attacks.data import FeatureSet
from attacker.attacks.identity import IdentityClassifier, IdentityMeter
from cem.distributed import SINGLE_PROCESS, DistributedContext, all_reduce_sum, shard_range
from cem.errors import ConfigError, MetricInputError
from cem.metrics import ReconstructionMeter
from cem.obfuscation import ObfuscationConfig, obfuscate

EVAL_BATCH_SIZE = 256
GRID_SAMPLES = 8


@dataclass(frozen=True)
class Evaluation:
    """Metrics over a scored set and the first ``GRID_SAMPLES`` images with their reconstructions (CPU)."""

    metrics: dict[str, float]
    originals: torch.Tensor
    reconstructions: torch.Tensor


@torch.no_grad()
def iterate_reconstructions(
    network: nn.Module,
    features: torch.Tensor,
    obfuscation: ObfuscationConfig | None,
    *,
    seed: int,
    batch_size: int = EVAL_BATCH_SIZE,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (rows, reconstructions) per batch; ``features`` are clean (obfuscated here) or, with
    ``obfuscation=None``, already exactly as transmitted. Restores the network's mode afterwards.

    With ``distributed`` enabled each rank reconstructs only its contiguous part of every batch
    (``shard_range``; ``rows`` says which), after drawing the client transform for the whole batch, so
    the noise every image gets is the one a single process gives it."""
    was_training = network.training
    network.eval()
    generator = torch.Generator(device=features.device).manual_seed(seed)
    try:
        for start in range(0, features.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            z = features[rows]
            if obfuscation is not None and not obfuscation.is_identity:
                z = obfuscate(z, obfuscation, generator)
            if distributed.enabled:
                lo, hi = shard_range(z.shape[0], distributed)
                rows, z = slice(start + lo, start + hi), z[lo:hi]
                if hi == lo:
                    continue
            yield rows, network(z)
    finally:
        network.train(was_training)


def measure_mse(network: nn.Module, data: FeatureSet, obfuscation: ObfuscationConfig, *, seed: int,
                distributed: DistributedContext = SINGLE_PROCESS) -> float:
    """Mean per-pixel MSE of ``network`` on ``data`` (for checkpoint selection); with ``distributed``, the ranks
    share each batch and sum their errors, and every rank returns the same value."""
    total = torch.zeros((), device=data.images.device)
    for rows, recon in iterate_reconstructions(network, data.features, obfuscation, seed=seed,
                                               distributed=distributed):
        total += (recon - data.images[rows]).pow(2).flatten(1).mean(dim=1).sum()
    return float(all_reduce_sum(total, distributed)) / max(1, len(data))


def evaluate_attack(
    network: nn.Module, data: FeatureSet, obfuscation: ObfuscationConfig, *, seed: int, samples: int = GRID_SAMPLES,
    native_size: int | None = None, classifier: IdentityClassifier | None = None,
) -> Evaluation:
    """MSE, PSNR (per image and per batch) and SSIM (ours and the reference's, ``ssim_ref``) of ``network``
    on ``data``, plus sample images for a grid.

    With an evaluation ``classifier`` (trained on the attacker's data, never on ``data``), which needs
    ``data.labels``, the metrics also hold ``attack_accuracy``, ``classifier_accuracy`` and
    ``chance_accuracy`` (``IdentityMeter``)."""
    meter = ReconstructionMeter(native_size)
    identity: IdentityMeter | None = None
    if classifier is not None:
        if data.labels is None:
            raise ConfigError("expected labelled scored images to measure attack accuracy, got no labels")
        identity = IdentityMeter(classifier)
    first: torch.Tensor | None = None
    for rows, recon in iterate_reconstructions(network, data.features, obfuscation, seed=seed):
        meter.update(recon, data.images[rows])
        if identity is not None and data.labels is not None:
            identity.update(recon, data.images[rows], data.labels[rows])
        if first is None:
            first = recon[:samples].cpu()
    if first is None:
        raise MetricInputError("expected images to score, got none")
    metrics = meter.summary()
    if identity is not None:
        metrics.update(identity.summary())
    return Evaluation(metrics, data.images[: first.shape[0]].cpu(), first)
