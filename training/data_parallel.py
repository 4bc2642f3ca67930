"""What the trainer changes under DistributedDataParallel: the batch split, the sampler, the wrap, the refusals.

**Batch size is global.** ``--batch-size B`` with W processes gives each process
B / W samples per step (B must divide evenly), so one optimiser step still
averages the gradient of B samples and the paper's recipe (B = 128, lr 0.05,
its milestones) applies unchanged: no learning-rate scaling with W. CEM's
Eq. 5-6 statistics and NoPeek's distance correlation are computed on the
gathered global batch of B rows (``training.distributed``; process groups and ranks are
``cem.distributed``'s). What does differ from
one process: BatchNorm normalises with each process's B / W samples (plain DDP;
``SyncBatchNorm`` runs on GPUs only), and the running statistics kept are rank 0's
(DDP broadcasts buffers before every forward).

**Sampling.** ``DistributedSampler`` shuffles with the run's seed (and
``set_epoch`` each epoch), so every rank draws the same permutation and takes
every W-th position; when W does not divide N it repeats up to W − 1 samples so
every rank gets as many. Those copies reach the cross-entropy (as in any DDP
run) but are cut from the gathered batch, so L_C and the mixture refit see each
training image exactly once per epoch.

**The mixture.** The feature cache holds the gathered global batches, i.e. the
epoch's features in the permutation's order, identical on every rank; each rank
refits on them with the shared generator and then takes rank 0's fit
(``refit_shared``), so the mixture is the one a single process fits on the same
features in the same order, and all ranks hold it bit for bit.

**Defenses.** noise, bottleneck, dropout, topk (client transforms and the
architecture) and distcorr (a loss on the gathered global batch) train under DDP.
ressfl and patrol are refused with a ``ConfigError`` naming the defense
(``Defense.data_parallel_refusal`` says why); train them with one process.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from cem.distributed import DistributedContext
from cem.errors import ConfigError
from training.cem_plugin import CEMRegularizer
from training.defenses import DefenseStack
from training.distributed import broadcast_mixture
from training.loops import FeatureCache


def check_data_parallel(batch_size: int, defenses: DefenseStack, world_size: int) -> None:
    """Refuse what cannot train correctly on ``world_size`` processes (nothing on one)."""
    if world_size <= 1:
        return
    if batch_size % world_size:
        raise ConfigError(f"expected --batch-size divisible by the {world_size} processes (it is the global batch, "
                          f"split evenly), got {batch_size}")
    for defense in defenses.defenses:
        if defense.data_parallel_refusal is not None:
            raise ConfigError(f"expected one process with the {defense.name} defense, got {world_size}: "
                              f"{defense.name} cannot train under DistributedDataParallel because "
                              f"{defense.data_parallel_refusal}")


def per_process_batch(batch_size: int, distributed: DistributedContext) -> int:
    """Each process's share of the global ``batch_size``."""
    return batch_size // distributed.world_size


def shard_sampler(dataset: Dataset, distributed: DistributedContext, seed: int) -> DistributedSampler | None:
    """This rank's share of each epoch's shuffled permutation (None on one process: the loader shuffles)."""
    if not distributed.enabled:
        return None
    return DistributedSampler(dataset, num_replicas=distributed.world_size, rank=distributed.rank, shuffle=True,
                              seed=seed, drop_last=False)


def wrap_step(step: nn.Module, distributed: DistributedContext) -> nn.Module:
    """``step`` under DDP (its gradients averaged over the ranks at every backward); as is on one process.

    DDP broadcasts rank 0's parameters and buffers when it wraps, so every rank starts
    from the same model whatever its global RNG did.
    """
    if not distributed.enabled:
        return step
    device = next(step.parameters()).device
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


def refit_shared(cem: CEMRegularizer, cache: FeatureCache, generator: torch.Generator,
                 distributed: DistributedContext) -> dict[str, float]:
    """The epoch's mixture refit on the cached global features -> its bound; every rank then holds rank 0's fit."""
    bound = cem.refit(*cache.tensors(), generator=generator)
    if distributed.enabled and cem.mixture is not None:
        cem.load_mixture(broadcast_mixture(cem.mixture, distributed))
    return bound
