"""The decoder and GAN attacks on real digits features: they work, and the metrics respond."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from attacker.attacks import (
    AttackCancelled,
    DecoderAttackConfig,
    FeatureSet,
    GanAttackConfig,
    ProgressMonitor,
    build_attack_split,
    evaluate_attack,
    run_attack,
    train_decoder_attack,
    train_gan_attack,
)
from attacker.attacks.data import INFER_FIT_FRACTION
from attacker.attacks.loop import HalfBudgetCheck, TrainedAttack, effective_batch_size
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig

# The smallest budget that clears 25 dB with margin: 6 epochs gave 26.1-27.2 dB over seeds 0-3.
SMALL_DECODER = DecoderAttackConfig(epochs=8, batch_size=32, lr=3e-3, num_blocks=0, channels=16)


def test_protocols_split_the_data_as_documented(digits_feature_sets: dict[str, FeatureSet]) -> None:
    train, test = digits_feature_sets["train"], digits_feature_sets["test"]
    split = build_attack_split("train", train, test, val_fraction=0.1, seed=0)
    assert len(split.fit) + len(split.val) == len(train) and len(split.val) == round(0.1 * len(train))
    assert torch.equal(split.eval.images, test.images)
    infer = build_attack_split("infer", train, test, val_fraction=0.1, seed=0)
    cut = int(len(test) * INFER_FIT_FRACTION)
    assert torch.equal(infer.eval.images, test.images[cut:])
    assert len(infer.fit) + len(infer.val) == cut
    with pytest.raises(ConfigError, match="attack mode"):
        build_attack_split("both", train, test)


@pytest.mark.slow
def test_decoder_attack_reconstructs_noise_free_features_well(digits_feature_sets: dict[str, FeatureSet]) -> None:
    split = build_attack_split("train", digits_feature_sets["train"], digits_feature_sets["test"], seed=0)
    trained = train_decoder_attack(split, ObfuscationConfig(), SMALL_DECODER, seed=0)
    metrics = evaluate_attack(trained.network, split.eval, ObfuscationConfig(), seed=1).metrics
    assert metrics["n"] == len(digits_feature_sets["test"])
    assert metrics["psnr"] >= 25.0, metrics
    assert metrics["ssim"] >= 0.85, metrics
    assert 1 <= trained.best_epoch <= SMALL_DECODER.epochs


@pytest.mark.slow
def test_decoder_attack_on_features_that_carry_nothing_gets_the_data_variance(
    digits_feature_sets: dict[str, FeatureSet],
) -> None:
    split = build_attack_split("train", digits_feature_sets["train"], digits_feature_sets["test"], seed=0)
    drowned = ObfuscationConfig(noise_std=1e3)
    trained = train_decoder_attack(split, drowned, SMALL_DECODER, seed=0)
    mse = evaluate_attack(trained.network, split.eval, drowned, seed=1).metrics["mse"]
    # The best blind guess is the attacker's mean image; its MSE is the data variance (plus a mean shift).
    blind = (split.eval.images - split.fit.images.mean(dim=0)).pow(2).mean().item()
    assert 0.95 * blind <= mse <= 1.2 * blind, (mse, blind)


@pytest.mark.slow
def test_gan_attack_trains_without_nan_and_improves_over_its_first_epoch(
    digits_feature_sets: dict[str, FeatureSet],
) -> None:
    split = build_attack_split("infer", digits_feature_sets["train"], digits_feature_sets["test"], seed=0)
    config = GanAttackConfig(epochs=6, batch_size=32, n_critic=2, critic_dim=16, num_blocks=1, channels=32,
                             generator_lr=2e-3)
    trained = train_gan_attack(split, ObfuscationConfig(noise_std=0.05), config, seed=0)
    history = trained.history
    assert len(history) == config.epochs
    for row in history:
        assert all(math.isfinite(v) for v in (row["critic_loss"], row["generator_loss"], row["val_mse"])), row
        assert row["generator_steps"] > 0
    assert history[-1]["val_mse"] < history[0]["val_mse"], [row["val_mse"] for row in history]
    assert all(torch.isfinite(p).all() for p in trained.network.parameters())


def test_gan_attack_starts_from_the_decoder_attack_and_never_selects_worse(
    digits_feature_sets: dict[str, FeatureSet],
) -> None:
    split = build_attack_split("infer", digits_feature_sets["train"], digits_feature_sets["test"], seed=0)
    noise = ObfuscationConfig(noise_std=0.05)
    decoder_config = DecoderAttackConfig(epochs=2, batch_size=64, num_blocks=1, channels=16)
    decoder = train_decoder_attack(split, noise, decoder_config)
    start = evaluate_attack(decoder.network, split.val, noise, seed=3).metrics["mse"]
    config = GanAttackConfig(epochs=2, batch_size=64, n_critic=2, critic_dim=8)
    gan = train_gan_attack(split, noise, config, init=decoder.network, seed=0)
    assert gan.network is not decoder.network
    assert gan.network.config == decoder.network.config
    assert evaluate_attack(gan.network, split.val, noise, seed=3).metrics["mse"] <= start + 1e-6


def test_progress_is_monotone_and_should_stop_cancels(digits_feature_sets: dict[str, FeatureSet]) -> None:
    split = build_attack_split("infer", digits_feature_sets["train"], digits_feature_sets["test"], seed=0)
    fractions: list[float] = []
    monitor = ProgressMonitor(progress=lambda f, _: fractions.append(f), should_stop=lambda: len(fractions) >= 3)
    config = DecoderAttackConfig(epochs=5, batch_size=64, num_blocks=0, channels=8)
    with pytest.raises(AttackCancelled):
        run_attack("decoder", split, ObfuscationConfig(), decoder_config=config, monitor=monitor)
    assert len(fractions) == 3 and fractions == sorted(fractions) and 0 < fractions[-1] < 1


def test_batch_size_shrinks_only_for_small_attacker_sets() -> None:
    assert effective_batch_size(45_000, 256, 16) == 256
    assert effective_batch_size(1132, 256, 16) == 70
    assert effective_batch_size(436, 256, 16) == 27
    assert effective_batch_size(10, 256, 16) == 1
    assert effective_batch_size(436, 256, 0) == 256


def test_still_improving_judges_the_last_tenth_of_the_run() -> None:
    def attack(val: list[float | None]) -> TrainedAttack:
        return TrainedAttack(network=None, history=[{"epoch": i + 1, "val_mse": v} for i, v in enumerate(val)])  # type: ignore[arg-type]

    flat = [0.1 - 0.01 * i for i in range(9)] + [0.0195] * 11  # converged by epoch 9
    assert not attack(flat).still_improving()
    falling = [0.1 * 0.9**i for i in range(20)]  # 10 % better per epoch to the very end
    assert attack(falling).still_improving()
    assert not attack([None] * 5).still_improving()


def test_batch_size_never_shrinks_below_its_floor() -> None:
    assert effective_batch_size(1132, 256, 64, 16) == 17
    assert effective_batch_size(392, 256, 64, 16) == 16
    assert effective_batch_size(10, 8, 64, 16) == 8  # never above batch_size



def test_the_convergence_check_runs_half_the_epochs_and_returns_the_stronger_run(
    digits_feature_sets: dict[str, FeatureSet],
) -> None:
    split = build_attack_split("infer", digits_feature_sets["train"], digits_feature_sets["test"], seed=0)
    config = DecoderAttackConfig(epochs=4, num_blocks=0, channels=8)
    trained = train_decoder_attack(split, ObfuscationConfig(noise_std=0.1), config, seed=0)
    check = trained.half_budget
    assert check is not None and check.half_epochs == 2
    assert trained.best_val_mse() == min(check.half_val_mse, check.full_val_mse)
    assert trained.still_improving() == (check.gain > 0.02)
    alone = train_decoder_attack(
        split, ObfuscationConfig(noise_std=0.1), dataclasses.replace(config, convergence_check=False), seed=0
    )
    assert alone.half_budget is None and alone.best_val_mse() == check.full_val_mse  # same seed, same full run


def test_a_half_budget_check_decides_still_improving() -> None:
    history = [{"epoch": 1, "val_mse": 0.01}, {"epoch": 2, "val_mse": 0.005}]  # the tail rule alone would flag this
    converged = TrainedAttack(network=None, history=history, half_budget=HalfBudgetCheck(1, 0.00505, 0.005))  # type: ignore[arg-type]
    assert not converged.still_improving()
    improving = TrainedAttack(network=None, history=history, half_budget=HalfBudgetCheck(1, 0.006, 0.005))  # type: ignore[arg-type]
    assert improving.still_improving() and improving.half_budget.gain == pytest.approx(0.2)
