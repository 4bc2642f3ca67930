"""Data-parallel attacks: how N processes (``cem-attack --nproc N``, or torchrun) share one attack.

**The learned attacks (decoder, GAN, the hybrid's decoder).** Every rank builds the
same ``AttackSplit`` (it is deterministic), the same seeded networks, and walks the
same shuffled global batches (the shuffle generator is shared). Rank r trains on
``shard_rows``, the rows r, r + W, r + 2W, ... of each global batch; its loss is its
slice's mean scaled by ``shard_weight`` (its rows · W / the batch's rows), so that
averaging the ranks' gradients (``cem.distributed.average_gradients``) gives exactly
the gradient of the global batch's mean loss, also for a last batch that does not
split evenly (a rank with no rows contributes a zero gradient). The ranks' optimisers
then take identical steps from identical states, so their weights stay equal bit for
bit without being sent again. After each step the BatchNorm running statistics of the
trained network are rank 0's (``broadcast_buffers``), as DDP's ``broadcast_buffers``
keeps them; BatchNorm itself normalises with each rank's slice (``SyncBatchNorm``
needs CUDA, and is not used), so N processes are another run of the recipe, not the
same numbers. Noise and the GAN's interpolation weights on rank r come from
seed + r · ``RANK_SEED_STRIDE``, so the ranks never add identical noise; rank 0 keeps
the single-process seeds.

**Why by hand, not DistributedDataParallel.** That is DDP's arithmetic (average the
gradients after the backward, broadcast rank 0's buffers), written out because the
GAN's critic step runs the critic several times before one backward (fake images,
real images, and the gradient-penalty interpolates, whose ``autograd.grad`` with
``create_graph`` needs a double backward), which DDP's reducer does not support;
one mechanism for every attack keeps the decoder and the GAN alike.

**Checkpoint selection** measures the validation MSE with each rank reconstructing a
contiguous part of every validation batch (the noise is drawn for the whole batch, as
on one process) and sums the squared errors over the ranks, so every rank gets the
same number, keeps the same epoch and restores the same weights.

**The optimisation attacks** train no network: each image is inverted on its own, so
the images are split instead (``cem.distributed.shard_range``, contiguous chunks) and
the reconstructions gathered (``all_gather_rows``); per-image starts are seeded by the
image's index, so N processes give one process's reconstructions, image for image.

**Who scores.** Rank 0 alone trains the identity classifier, scores the attack on the
scored images, renders the grid and writes; the other ranks take part only where the
scoring runs an optimisation (its images are sharded too), then wait for rank 0's
result (``attacker.audit.run_audit``).
"""

from __future__ import annotations

import torch

from cem.distributed import DistributedContext


def shard_rows(rows: torch.Tensor, distributed: DistributedContext) -> torch.Tensor:
    """This rank's rows of a global batch: positions rank, rank + W, ... (all of them on one process)."""
    if not distributed.enabled:
        return rows
    return rows[distributed.rank :: distributed.world_size]


def shard_weight(local_rows: int, global_rows: int, distributed: DistributedContext) -> float:
    """local_rows · W / global_rows: turns this rank's slice mean into its share of the global batch mean once the
    gradients are averaged over W ranks; exactly 1.0 on one process, so one process computes as before."""
    if not distributed.enabled:
        return 1.0
    return local_rows * distributed.world_size / global_rows
