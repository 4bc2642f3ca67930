"""Process-group setup, rank helpers and the collectives data-parallel training needs.

``torchrun --nproc_per_node N $(which cem-train) ...`` (or ``cem-train --nproc N``,
``training.launch``) starts N copies of the trainer with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT set. ``process_group`` joins them: gloo on CPU, NCCL on
CUDA with device ``cuda:LOCAL_RANK``. Without WORLD_SIZE > 1 (and no group already
initialised by the caller) it does nothing, so one process trains exactly as before.

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

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cem.errors import ConfigError
from cem.mixture import ClassMixture

T = TypeVar("T")

# Rank r > 0 draws its noise (and dropout masks) from seed + r · RANK_SEED_STRIDE, so the
# ranks never add identical noise and rank 0 keeps the single-process seeds.
RANK_SEED_STRIDE = 1000
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank in [0, world_size), the backend (None without a group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(f"expected 0 <= rank < world_size and local_rank >= 0, got rank {self.rank}, "
                              f"world_size {self.world_size}, local_rank {self.local_rank}")

    @property
    def enabled(self) -> bool:
        """True when other processes train the same model (the collectives below communicate)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that evaluates, logs and writes files."""
        return self.rank == 0

    def seed(self, base: int) -> int:
        """A per-rank seed: ``base`` on rank 0 (the single-process value), shifted on the others."""
        return base + RANK_SEED_STRIDE * self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE_PROCESS = DistributedContext()


def launch_env_world_size() -> int:
    """WORLD_SIZE as a launcher (torchrun) set it, or 1 outside one."""
    return _env_int("WORLD_SIZE", 1)


def launch_env_rank() -> int:
    """RANK as a launcher set it, or 0 outside one: which process may print and log."""
    return _env_int("RANK", 0)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"expected {name} to be an integer (as torchrun sets it), got {text!r}") from None


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones (the only backends that support each well)."""
    return "nccl" if device.type == "cuda" else "gloo"


def current_context() -> DistributedContext:
    """The context of an initialised default process group, or ``SINGLE_PROCESS``."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=_env_int("LOCAL_RANK", dist.get_rank()), backend=str(dist.get_backend()))


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DistributedContext, torch.device]]:
    """Join the launcher's process group for the duration of the block -> (context, this rank's device).

    Uses a group the caller already initialised (and leaves it open); otherwise reads
    torchrun's environment, initialises the group and destroys it on exit. CUDA ranks
    get ``cuda:LOCAL_RANK``. With WORLD_SIZE unset or 1 nothing is initialised.
    """
    if dist.is_available() and dist.is_initialized():
        context = current_context()
        yield context, _rank_device(device, context.local_rank)
        return
    world_size = launch_env_world_size()
    if world_size <= 1:
        yield SINGLE_PROCESS, device
        return
    if not dist.is_available():
        raise ConfigError(f"expected a torch build with torch.distributed for WORLD_SIZE={world_size}, got none")
    missing = [name for name in (*LAUNCH_ENV, "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"expected torchrun's environment with WORLD_SIZE={world_size}, got {missing} unset")
    local_rank = _env_int("LOCAL_RANK", 0)
    device = _rank_device(device, local_rank)
    dist.init_process_group(backend_for(device), init_method="env://")
    try:
        yield current_context(), device
    finally:
        dist.destroy_process_group()


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One CUDA device per local rank (NCCL refuses two ranks on one GPU); CPU stays CPU."""
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"expected a CUDA device per local rank, got LOCAL_RANK={local_rank} "
                          f"with {torch.cuda.device_count()} device(s)")
    ranked = torch.device("cuda", local_rank)
    torch.cuda.set_device(ranked)
    return ranked


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


def all_reduce_sum(tensor: torch.Tensor, distributed: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (no-op on one process); returns it."""
    if distributed.enabled:
        dist.all_reduce(tensor)
    return tensor


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


def broadcast_object(value: T, distributed: DistributedContext) -> T:
    """Rank 0's ``value`` (any picklable object holding CPU tensors at most) on every rank."""
    if not distributed.enabled:
        return value
    box: list[Any] = [value if distributed.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
