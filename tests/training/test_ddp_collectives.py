"""Two gloo ranks (spawned, FileStore) against one process: the mixture refit and one CEM + NoPeek step.

Both ranks read their shard through the trainer's own pieces (``shard_sampler``, a
DataLoader, ``EpochCursor``/``GlobalBatch.gather``, ``refit_shared``, ``wrap_step``), and
the results are compared with what one process computes on the epoch's permutation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.spawn import spawn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from cem.distributed import SINGLE_PROCESS, DistributedContext, current_context
from cem.launch import exit_without_teardown
from training.cem_plugin import CEMConfig, CEMRegularizer
from training.data_parallel import refit_shared, shard_sampler, wrap_step
from training.defenses import DefenseStack, create_defense
from training.distributed import EpochCursor
from training.loops import FeatureCache

WORLD = 2
N, D, CLASSES, K = 101, 6, 3, 2  # N odd: DistributedSampler pads one copy, which the gather must drop
LOCAL_BATCH = 8
SAMPLER_SEED, EPOCH, MIXTURE_SEED = 11, 3, 5
CEM_WEIGHT = 2.0


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """features (N, D), labels (N,), images (N, 1, 4, 4): the same on every rank."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (N,), generator=g)
    features = torch.rand(N, D, generator=g) + 0.5 * labels.unsqueeze(1)
    images = torch.rand(N, 1, 4, 4, generator=g)
    return features, labels, images


class _TinySplit(nn.Module):
    """A BatchNorm-free split model, so one process and two ranks compute the same function."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(16, D)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.sigmoid(self.encoder(x.flatten(1)))
        return z, self.head(z)


def _regularizer() -> CEMRegularizer:
    return CEMRegularizer(CEMConfig(lam=1.0, k=K), noise_std=0.1, num_classes=CLASSES, dataset_size=N, image_dim=16)


def _fitted_on_shards(distributed: DistributedContext) -> tuple[CEMRegularizer, dict[str, Any], list]:
    """One epoch of this rank's shard gathered into the cache, then the shared refit."""
    features, labels, images = _data()
    dataset = TensorDataset(features, labels, images)
    sampler = shard_sampler(dataset, distributed, SAMPLER_SEED)
    assert sampler is not None
    sampler.set_epoch(EPOCH)
    batches = list(DataLoader(dataset, batch_size=LOCAL_BATCH, sampler=sampler))
    cache, cursor = FeatureCache(N), EpochCursor(distributed, N)
    for x, y, _ in batches:
        batch = cursor.next_batch(y.shape[0])
        cache.add(batch.gather(x), batch.gather(y))
    cem = _regularizer()
    bound = refit_shared(cem, cache, torch.Generator().manual_seed(MIXTURE_SEED), distributed)
    cached, cached_labels = cache.tensors()
    assert cem.mixture is not None
    fitted = {"features": cached.clone(), "labels": cached_labels.clone(), "bound": bound,
              "means": cem.mixture.means, "variances": cem.mixture.variances, "counts": cem.mixture.counts}
    return cem, fitted, [(images, y) for _, y, images in batches]


def _step(cem: CEMRegularizer, model: nn.Module, batches: list, distributed: DistributedContext,
          whole_batch_terms: bool = True) -> dict[str, Any]:
    """Step 1: CE + λ·L_C + NoPeek (or CE alone) on the global batch, backward (gradients); step 2: L_C
    only, which reads the Eq. 5-6 running estimates step 1 wrote back. ``batches``: [(x, y), ...]."""
    dcor = DefenseStack((create_defense("distcorr", weight=0.5),))
    cursor = EpochCursor(distributed, N)
    (x1, y1), (x2, y2) = batches[0], batches[1]
    batch = cursor.next_batch(y1.shape[0])
    z, logits = model(x1)
    cem_loss = cem.loss(batch.gather(z), batch.gather(y1))
    defense_loss = dcor.loss(batch.gather(x1), batch.gather(z))
    assert defense_loss is not None
    weight = 1.0 if whole_batch_terms else 0.0
    (F.cross_entropy(logits, y1) + weight * (CEM_WEIGHT * cem_loss + defense_loss)).backward()
    batch = cursor.next_batch(y2.shape[0])
    with torch.no_grad():
        z2, _ = model(x2)
        second = cem.loss(batch.gather(z2), batch.gather(y2))
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    return {"grads": [g.clone() for g in grads if g is not None], "cem_loss": float(cem_loss.detach()),
            "dcor": float(defense_loss.detach()), "second_cem_loss": float(second)}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        distributed = current_context()
        cem, fitted, batches = _fitted_on_shards(distributed)
        torch.manual_seed(0)
        model = wrap_step(_TinySplit(), distributed)
        torch.save({"fit": fitted, "step": _step(cem, model, batches, distributed)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_without_teardown(0)


def _epoch_order() -> torch.Tensor:
    """The permutation a single process walks: DistributedSampler's, before padding and striding."""
    sampler: DistributedSampler = DistributedSampler(TensorDataset(torch.arange(N)), num_replicas=1, rank=0,
                                                     shuffle=True, seed=SAMPLER_SEED)
    sampler.set_epoch(EPOCH)
    return torch.tensor(list(sampler))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ddp")
    spawn(_worker, args=(str(root / "store"), str(root)), nprocs=WORLD, join=True)
    return [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    """One process on the same epoch: the cache in permutation order, its fit, and one step on the
    first global batch (2 × LOCAL_BATCH rows) and the second."""
    order = _epoch_order()
    features, labels, images = _data()

    def fitted() -> tuple[CEMRegularizer, dict[str, float]]:
        cem = _regularizer()
        return cem, cem.refit(features[order], labels[order], generator=torch.Generator().manual_seed(MIXTURE_SEED))

    global_batch = WORLD * LOCAL_BATCH
    first, second = order[:global_batch], order[global_batch : 2 * global_batch]
    batches = [(images[first], labels[first]), (images[second], labels[second])]
    cem, bound = fitted()
    torch.manual_seed(0)
    step = _step(cem, _TinySplit(), batches, SINGLE_PROCESS)
    torch.manual_seed(0)
    ce_only = _step(fitted()[0], _TinySplit(), batches, SINGLE_PROCESS, whole_batch_terms=False)
    assert cem.mixture is not None
    return {"order": order, "bound": bound, "mixture": cem.mixture, "step": step, "ce_only": ce_only}


def test_gathered_cache_is_the_epoch_in_permutation_order_without_the_padding_copy(
    ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    features, labels, _ = _data()
    for rank in ranks:
        assert rank["fit"]["features"].shape == (N, D)  # 102 sampled positions, the one copy dropped
        assert torch.equal(rank["fit"]["features"], features[single["order"]])
        assert torch.equal(rank["fit"]["labels"], labels[single["order"]])


def test_mixture_fitted_from_two_ranks_equals_the_single_process_fit_bit_for_bit(
    ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    """Tolerance 0: the same features in the same order, the same generator and one thread give the
    same Lloyd iterations; and every rank holds rank 0's fit (``broadcast_mixture``)."""
    mixture = single["mixture"]
    for rank in ranks:
        fit = rank["fit"]
        assert torch.equal(fit["means"], mixture.means)
        assert torch.equal(fit["variances"], mixture.variances)
        assert torch.equal(fit["counts"], mixture.counts)
    assert ranks[0]["fit"]["bound"] == single["bound"]


def test_ddp_gradient_of_cem_and_nopeek_on_the_global_batch_equals_one_process(
    ranks: list[dict[str, Any]], single: dict[str, Any]
) -> None:
    """The ranks' losses on gathered rows, summed back in the gather's backward and averaged by DDP, give
    the single-process gradient of CE + λ·L_C + dCor on the 16-row batch. Tolerance: float32 sums in a
    different order (two 8-row means averaged vs one 16-row mean), rtol 1e-5."""
    expected = single["step"]
    for rank in ranks:
        step = rank["step"]
        assert step["cem_loss"] == pytest.approx(expected["cem_loss"], rel=1e-6)
        assert step["dcor"] == pytest.approx(expected["dcor"], rel=1e-6)
        for got, want in zip(step["grads"], expected["grads"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        # Eq. 5-6 estimates written back by step 1 from all 16 rows, read by step 2
        assert step["second_cem_loss"] == pytest.approx(expected["second_cem_loss"], rel=1e-6)
    # the whole-batch terms move the encoder's gradient far beyond the tolerance, so the check has teeth
    encoder_weight = 0
    shift = (expected["grads"][encoder_weight] - single["ce_only"]["grads"][encoder_weight]).abs().max()
    assert shift > 1e-3
