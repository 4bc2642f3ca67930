"""The collectives CEM's data-parallel training needs beyond DDP: the global batch and the shared mixture.

Process groups, ranks and seeds are the kernel's (``cem.distributed``); ``cem-train
--nproc N`` re-launches through ``cem.launch``. This module holds what only the
trainer needs.

Why more than DDP's gradient averaging. DDP averages each rank's gradient, which is
the gradient of the global batch's loss only when that loss is a mean of per-sample
terms (the cross-entropy). CEM's L_C (Eq. 5-7: per-component counts, the batch
variances ΔΣ_j and the running π and Σ written back each batch) and NoPeek's distance
correlation (all pairwise distances) are functions of the whole batch. ``GlobalBatch.gather``
therefore rebuilds the global batch on every rank, in the order one process would see
it, with a gradient: every rank evaluates the same loss on the same rows, the backward
sums the ranks' gradients for each rank's own rows (W times the single-process
gradient), and DDP's division by W cancels the factor. The mixture refit sees the same
gathered rows, so it fits exactly the features one process would fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cem.distributed import DistributedContext
from cem.mixture import ClassMixture


class _AllGather(torch.autograd.Function):
    """(b, ...) on every rank -> (W, b, ...) stacked by rank; the backward returns each rank the
    sum over ranks of the gradient for its rows, because every rank's loss reads every rank's rows."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.contiguous().clone()
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def gather_interleaved(local: torch.Tensor, distributed: DistributedContext) -> torch.Tensor:
    """Every rank's rows in sampler order: (b, ...) -> (W·b, ...); differentiable; identity on one process.

    ``DistributedSampler`` hands rank r the positions r, r + W, r + 2W, ... of the epoch's
    permutation, so row i of rank r is global position i·W + r: stacking by rank and
    reading row-major over (row, rank) restores the permutation's order. All ranks must pass
    the same shape (they do: the sampler gives each the same number of samples).
    """
    if not distributed.enabled:
        return local
    stacked = _AllGather.apply(local)  # (W, b, ...)
    return stacked.transpose(0, 1).reshape(-1, *local.shape[1:])


@dataclass(frozen=True)
class GlobalBatch:
    """One training step's global batch: ``keep`` of its gathered rows are real samples, the rest
    the copies ``DistributedSampler`` appends so that every rank gets as many samples."""

    distributed: DistributedContext
    keep: int

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """(b, ...) on this rank -> (keep, ...), the global batch without padding (identity on one process)."""
        if not self.distributed.enabled:
            return local
        return gather_interleaved(local, self.distributed)[: self.keep]


class EpochCursor:
    """Counts the epoch's global positions, so each step knows which gathered rows are padding."""

    def __init__(self, distributed: DistributedContext, dataset_size: int) -> None:
        self.distributed = distributed
        self.dataset_size = dataset_size
        self.seen = 0

    def next_batch(self, local_size: int) -> GlobalBatch:
        """The next step's batch, for a local batch of ``local_size`` rows (equal on every rank)."""
        size = local_size * self.distributed.world_size
        keep = max(0, min(size, self.dataset_size - self.seen))
        self.seen += size
        return GlobalBatch(self.distributed, keep)


def broadcast_mixture(mixture: ClassMixture, distributed: DistributedContext) -> ClassMixture:
    """Rank 0's mixture on every rank, bit for bit.

    Every rank fits on the same gathered features with the same generator, which on the
    CPU gives identical bits already; on CUDA ``index_add_`` sums in a nondeterministic
    order, so the last bits could differ between ranks and then their L_C would too.
    """
    if not distributed.enabled:
        return mixture
    tensors = [mixture.means.contiguous().clone(), mixture.variances.contiguous().clone(),
               mixture.counts.contiguous().clone()]
    for tensor in tensors:
        dist.broadcast(tensor, src=0)
    means, variances, counts = tensors
    return ClassMixture(means=means, variances=variances, counts=counts, num_classes=mixture.num_classes, k=mixture.k)

