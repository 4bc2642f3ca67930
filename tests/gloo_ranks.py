"""Run one function on spawned gloo ranks (a FileStore rendezvous) and collect what each returned: the harness of
the data-parallel tests (imported by name)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn

from cem.distributed import DistributedContext, current_context
from cem.launch import exit_without_teardown

RankBody = Callable[[int, DistributedContext], dict[str, Any]]


def _rank_main(rank: int, body: RankBody, root: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.save(body(rank, current_context()), Path(root) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_without_teardown(0)  # spawn still checks the exit code; a rank that raised never gets here


def run_on_gloo_ranks(body: RankBody, root: Path, world: int) -> list[dict[str, Any]]:
    """``body(rank, context)`` on ``world`` spawned processes (a module-level function: spawn pickles it), each
    rank's returned dict read back in rank order."""
    spawn(_rank_main, args=(body, str(root), world), nprocs=world, join=True)
    return [torch.load(root / f"rank{rank}.pt") for rank in range(world)]
