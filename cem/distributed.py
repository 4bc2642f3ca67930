"""Process groups, rank helpers and the model-agnostic collectives of data-parallel runs.

``torchrun --nproc_per_node N $(which cem-train) ...`` (or ``cem-attack``, or either
with ``--nproc N``, ``cem.launch``) starts N copies of a command with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. ``process_group`` joins them: gloo on CPU,
NCCL on CUDA with device ``cuda:LOCAL_RANK``. Without WORLD_SIZE > 1 (and no group
already initialised by the caller) it does nothing, so one process runs exactly as before.

What the apps build on it: the trainer wraps its step in ``DistributedDataParallel``
and gathers CEM's whole-batch terms (``training.distributed``); the attacks average
gradients with ``average_gradients`` and keep rank 0's BatchNorm statistics with
``broadcast_buffers`` (``attacker.attacks.parallel`` says why not DDP), and the
optimisation attack splits its images with ``shard_range``/``all_gather_rows``.
Every collective here is the identity on one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cem.errors import ConfigError

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
        """True when other processes run the same job (the collectives below communicate)."""
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
        yield context, rank_device(device, context.local_rank)
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
    device = rank_device(device, _env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend_for(device), init_method="env://")
    try:
        yield current_context(), device
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One CUDA device per local rank (NCCL refuses two ranks on one GPU); CPU stays CPU."""
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"expected a CUDA device per local rank, got LOCAL_RANK={local_rank} "
                          f"with {torch.cuda.device_count()} device(s)")
    ranked = torch.device("cuda", local_rank)
    torch.cuda.set_device(ranked)
    return ranked


def all_reduce_sum(tensor: torch.Tensor, distributed: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (no-op on one process); returns it."""
    if distributed.enabled:
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(value: T, distributed: DistributedContext) -> T:
    """Rank 0's ``value`` (any picklable object holding CPU tensors at most) on every rank."""
    if not distributed.enabled:
        return value
    box: list[Any] = [value if distributed.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _flat_groups(tensors: Iterable[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """``tensors`` grouped by (dtype, device), so that each group travels as one flat buffer."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    yield from groups.values()


def _write_back(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def average_gradients(module: nn.Module, distributed: DistributedContext) -> None:
    """Replace each trainable parameter's gradient by its mean over the ranks (DDP's arithmetic); no-op on one
    process. One flat all-reduce per dtype; a parameter without a gradient on this rank (it skipped its
    backward, e.g. an empty shard) counts as a zero gradient, so every rank sends the same tensors."""
    if not distributed.enabled:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    for group in _flat_groups(p.grad for p in params if p.grad is not None):
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= distributed.world_size
        _write_back(flat, group)


def broadcast_buffers(module: nn.Module, distributed: DistributedContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP's ``broadcast_buffers`` does."""
    _broadcast(list(module.buffers()), distributed)


def broadcast_module(module: nn.Module, distributed: DistributedContext) -> None:
    """Rank 0's parameters and buffers on every rank, as DDP does when it wraps a module."""
    with torch.no_grad():
        _broadcast([*module.parameters(), *module.buffers()], distributed)


def _broadcast(tensors: list[torch.Tensor], distributed: DistributedContext) -> None:
    if not distributed.enabled or not tensors:
        return
    for group in _flat_groups(tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        _write_back(flat, group)


def shard_range(n: int, distributed: DistributedContext) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of ``n`` rows; sizes differ by at most one, rank order kept."""
    world, rank = distributed.world_size, distributed.rank
    return rank * n // world, (rank + 1) * n // world


def all_gather_rows(local: torch.Tensor, n: int, distributed: DistributedContext) -> torch.Tensor:
    """Every rank's ``shard_range`` rows back in order: (stop - start, ...) on each rank -> (n, ...) on every
    rank. The shards are padded to one size for the collective and cut again; identity on one process."""
    if not distributed.enabled or n == 0:
        return local
    spans = [shard_range(n, DistributedContext(rank=r, world_size=distributed.world_size))
             for r in range(distributed.world_size)]
    widest = max(stop - start for start, stop in spans)
    padded = local.new_zeros((widest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in spans]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: stop - start] for part, (start, stop) in zip(parts, spans, strict=True)])
