"""The attacks on two spawned gloo ranks (FileStore): every rank ends with the same networks, and the optimisation
attack gives one process's reconstructions. The attacks' own code runs on real digits features of the untrained
test encoder (the ``infer`` protocol: 437 images to fit, 48 to validate, 54 to score)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bundle_fixtures import build_digits_model
from gloo_ranks import run_on_gloo_ranks
from torch import nn

from attacker.attacks import (
    AttackSplit,
    DecoderAttackConfig,
    GanAttackConfig,
    OptimizeAttackConfig,
    build_attack_split,
    compute_feature_set,
    iterate_reconstructions,
    load_images,
    train_decoder_attack,
    train_gan_attack,
    train_optimize_attack,
)
from attacker.attacks.parallel import shard_rows, shard_weight
from cem.distributed import SINGLE_PROCESS, DistributedContext
from cem.models import InversionNetwork
from cem.obfuscation import ObfuscationConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

WORLD = 2
NOISE = ObfuscationConfig(noise_std=0.1)
DECODER = DecoderAttackConfig(epochs=1, num_blocks=1, channels=8, convergence_check=False)
# batch 27 on 437 images: 16 full batches split 14/13 and a last one of 5 split 3/2; the generator steps every other
GAN = GanAttackConfig(epochs=1, batch_size=64, n_critic=2, critic_dim=8)
# two restarts: the second start is random, seeded per image, which sharding must not change; batches of 16 so
# that the ranks batch the images differently from one process
OPTIMIZE = OptimizeAttackConfig(steps=4, restarts=2, batch_size=16)
SCORE_SEED = 100


def _split() -> tuple[AttackSplit, nn.Module]:
    encoder = build_digits_model().encoder
    test = compute_feature_set(encoder, load_images("digits", "test"))
    return build_attack_split("infer", test, test, seed=0), encoder


def _optimize(split: AttackSplit, encoder: nn.Module, distributed: DistributedContext) -> dict[str, Any]:
    """τ chosen on the validation images, then the scored images inverted (as the audit's scoring does)."""
    trained = train_optimize_attack(split, NOISE, encoder, OPTIMIZE, seed=0, distributed=distributed)
    parts = [r for _, r in iterate_reconstructions(trained.network, split.eval.features, NOISE, seed=SCORE_SEED)]
    return {"tau": trained.extra["tv_weight"], "by_tau": trained.extra["val_mse_by_tv_weight"],
            "curve": [row["val_mse"] for row in trained.history], "recon": torch.cat(parts)}


def _rank(rank: int, distributed: DistributedContext) -> dict[str, Any]:
    split, encoder = _split()
    decoder = train_decoder_attack(split, NOISE, DECODER, seed=0, distributed=distributed)
    assert isinstance(decoder.network, InversionNetwork)
    gan = train_gan_attack(split, NOISE, GAN, init=decoder.network, seed=0, distributed=distributed)
    return {
        "decoder": decoder.network.state_dict(), "decoder_val": decoder.val_curve(),
        "gan": gan.network.state_dict(), "gan_val": gan.val_curve(), "gan_best": gan.best_epoch,
        "gan_history": gan.history, "optimize": _optimize(split, encoder, distributed),
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_on_gloo_ranks(_rank, tmp_path_factory.mktemp("attacks-ddp"), WORLD)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_both_ranks_hold_the_same_decoder_and_select_the_same_epoch(ranks: list[dict[str, Any]]) -> None:
    """Averaged gradients, identical optimiser steps and rank 0's BatchNorm statistics: the same bits."""
    _assert_same_weights(ranks[0]["decoder"], ranks[1]["decoder"])
    assert ranks[0]["decoder_val"] == ranks[1]["decoder_val"]  # the validation MSE, summed over the ranks


def test_after_a_gan_epoch_both_ranks_hold_the_same_generator(ranks: list[dict[str, Any]]) -> None:
    _assert_same_weights(ranks[0]["gan"], ranks[1]["gan"])
    assert ranks[0]["gan_val"] == ranks[1]["gan_val"] and ranks[0]["gan_best"] == ranks[1]["gan_best"]
    for one, two in zip(ranks[0]["gan_history"], ranks[1]["gan_history"], strict=True):
        assert one["generator_steps"] == two["generator_steps"] == 8  # 17 global batches, every other one
        assert one["critic_loss"] == pytest.approx(two["critic_loss"], rel=1e-6)  # summed over the ranks


def test_two_ranks_invert_the_images_one_process_inverts(ranks: list[dict[str, Any]]) -> None:
    """Each image's optimisation is independent of the others and its random start is seeded by its index, so
    the ranks' shares, gathered, are the single-process reconstructions. Tolerance: batches of other sizes round
    the encoder's float32 sums differently, and 4 Adam steps carry that along: atol 1e-5 on pixels in [0, 1]."""
    split, encoder = _split()
    torch.set_num_threads(1)
    single = _optimize(split, encoder, SINGLE_PROCESS)
    for rank in ranks:
        got = rank["optimize"]
        assert got["tau"] == single["tau"]
        assert got["by_tau"] == pytest.approx(single["by_tau"], rel=1e-5)
        assert got["curve"] == pytest.approx(single["curve"], rel=1e-5)
        assert got["recon"].shape == single["recon"].shape == (len(split.eval), 1, 32, 32)
        torch.testing.assert_close(got["recon"], single["recon"], rtol=0, atol=1e-5)


def test_the_slices_of_a_global_batch_cover_it_once_and_weigh_it_back_to_its_mean() -> None:
    rows = torch.arange(5)
    halves = [shard_rows(rows, DistributedContext(rank=r, world_size=2)) for r in range(2)]
    assert [h.tolist() for h in halves] == [[0, 2, 4], [1, 3]]
    assert shard_rows(rows, SINGLE_PROCESS) is rows and shard_weight(5, 5, SINGLE_PROCESS) == 1.0
    # averaged over 2 ranks, 3/5 and 2/5 of the batch: (mean_0 · 6/5 + mean_1 · 4/5) / 2 = the batch's mean
    weights = [shard_weight(h.numel(), 5, DistributedContext(rank=r, world_size=2)) for r, h in enumerate(halves)]
    assert weights == [pytest.approx(1.2), pytest.approx(0.8)]
