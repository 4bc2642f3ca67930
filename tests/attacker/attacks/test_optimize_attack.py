"""The optimisation attacks: feature matching through the known encoder, with σ in the likelihood, and the hybrid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacker.attacks import (
    AttackCancelled,
    FeatureSet,
    OptimizeAttackConfig,
    ProgressMonitor,
    build_attack_split,
    evaluate_attack,
    load_images,
    run_attack,
)
from attacker.attacks.optimize import FeatureMatchingInverter, kept_entries, total_variation
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig, obfuscate


class Unshuffle(nn.Module):
    """An invertible, identity-like encoder: 1×32×32 -> 4×16×16 by pixel unshuffle, then an affine map into
    (0, 1) like the Sigmoid features of a real bundle. It has one parameter so that its gradient can be watched."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.1 + self.scale * nn.functional.pixel_unshuffle(x, 2)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_images("digits", "test")[:24]


def invert(encoder: nn.Module, z: torch.Tensor, sigma: float, tv: float, steps: int = 150,
           mean: torch.Tensor | None = None) -> torch.Tensor:
    config = OptimizeAttackConfig(steps=steps, tv_weight=tv)
    start = torch.full((1, 32, 32), 0.3) if mean is None else mean
    inverter = FeatureMatchingInverter(encoder, ObfuscationConfig(noise_std=sigma), config, tv, start)
    with torch.no_grad():  # as the evaluation code calls it
        return inverter(z)


def test_without_noise_it_recovers_the_images_an_identity_like_encoder_sent(digits: torch.Tensor) -> None:
    encoder = Unshuffle()
    with torch.no_grad():
        z = encoder(digits)
    recon = invert(encoder, z, sigma=0.0, tv=0.0, steps=OptimizeAttackConfig().steps)
    mse = float((recon - digits).pow(2).mean())
    # measured 1.5e-4 (38 dB; the pixels at exactly 0 or 1 are approached through the sigmoid's tails)
    assert mse < 3e-4, mse
    assert float((torch.full_like(digits, 0.3) - digits).pow(2).mean()) > 0.02


def test_sigma_weighs_the_likelihood_against_the_prior_as_the_likelihood_says(digits: torch.Tensor) -> None:
    encoder = Unshuffle()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = obfuscate(encoder(digits), ObfuscationConfig(noise_std=0.1), generator)
    sharp = invert(encoder, z, sigma=0.02, tv=1.0)
    smooth = invert(encoder, z, sigma=0.5, tv=1.0)
    # a larger σ trusts the features less: the TV prior wins more, so the image is smoother and fits z worse
    assert float(total_variation(smooth).mean()) < 0.5 * float(total_variation(sharp).mean())
    with torch.no_grad():
        assert float((encoder(smooth) - z).pow(2).mean()) > float((encoder(sharp) - z).pow(2).mean())
    # only the ratio σ²·τ matters: σ twice as large with τ four times smaller gives the same minimiser's objective
    config = OptimizeAttackConfig(steps=1)
    a = FeatureMatchingInverter(encoder, ObfuscationConfig(noise_std=0.1), config, 1.0, digits[0])
    b = FeatureMatchingInverter(encoder, ObfuscationConfig(noise_std=0.2), config, 0.25, digits[0])
    kept = torch.ones_like(z)
    assert torch.allclose(4 * b._objective(encoder, digits, z, kept), a._objective(encoder, digits, z, kept))


def test_gradients_reach_only_the_images_and_the_encoder_is_left_as_it_was(digits: torch.Tensor) -> None:
    encoder = Unshuffle().train()
    with torch.no_grad():
        z = encoder(digits)
    before = encoder.scale.detach().clone()
    invert(encoder, z, sigma=0.1, tv=0.3, steps=5)
    assert encoder.scale.grad is None and torch.equal(encoder.scale.detach(), before)
    assert encoder.scale.requires_grad and encoder.training  # restored after the attack


def test_entries_the_client_dropped_are_left_out_of_the_likelihood() -> None:
    z = torch.tensor([[[[0.0, 0.4], [0.7, 0.0]]]])
    assert torch.equal(kept_entries(z, ObfuscationConfig(noise_std=0.1)), torch.ones_like(z))
    assert torch.equal(kept_entries(z, ObfuscationConfig(noise_std=0.1, dropout_p=0.5)),
                       torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]))
    assert torch.equal(kept_entries(z, ObfuscationConfig(topk_ratio=0.5)), kept_entries(z, ObfuscationConfig(
        dropout_p=0.1)))


def test_the_attack_chooses_tv_on_validation_and_records_its_curve_and_settings(
    digits_feature_sets: dict[str, FeatureSet],
) -> None:
    from bundle_fixtures import build_digits_model

    encoder = build_digits_model().encoder.eval()
    train = digits_feature_sets["train"].subset(slice(0, 60))
    test = digits_feature_sets["test"].subset(slice(0, 40))
    split = build_attack_split("infer", train, test, val_fraction=0.25, seed=0)
    obfuscation = ObfuscationConfig(noise_std=0.1)
    config = OptimizeAttackConfig(steps=20, batch_size=16)
    with pytest.raises(ConfigError, match="no epochs for the optimize attack"):
        run_attack("optimize", split, obfuscation, epochs=3, encoder=encoder, optimize_config=config)
    with pytest.raises(ConfigError, match="encoder for the optimize attack"):
        run_attack("optimize", split, obfuscation, optimize_config=config)
    trained = run_attack("optimize", split, obfuscation, encoder=encoder, optimize_config=config, seed=1)
    extra = trained.extra
    assert set(extra["val_mse_by_tv_weight"]) == {"0.0", "0.3", "1.0", "3.0", "10.0"}
    assert extra["tv_weight"] == float(min(extra["val_mse_by_tv_weight"], key=extra["val_mse_by_tv_weight"].get))
    assert extra["steps_per_image"] == 20 and extra["sigma"] == 0.1
    assert [row["epoch"] for row in trained.history] == [2.0 * i for i in range(1, 11)]
    assert trained.best_epoch == 20 and trained.half_budget is not None and trained.half_budget.half_epochs == 10
    assert trained.still_improving() == (trained.half_budget.gain > 0.02)  # judged by the half-budget run
    scored = evaluate_attack(trained.network, split.eval, obfuscation, seed=100)
    assert 0 < scored.metrics["mse"] < 0.2 and scored.metrics["n"] == len(split.eval)


def test_the_hybrid_refines_the_decoder_and_keeps_its_convergence(digits_feature_sets: dict[str, FeatureSet]) -> None:
    from bundle_fixtures import build_digits_model

    from attacker.attacks import DecoderAttackConfig

    encoder = build_digits_model().encoder.eval()
    split = build_attack_split("infer", digits_feature_sets["train"].subset(slice(0, 40)),
                               digits_feature_sets["test"].subset(slice(0, 40)), val_fraction=0.25)
    trained = run_attack("decoder+optimize", split, ObfuscationConfig(noise_std=0.1), epochs=2, encoder=encoder,
                         decoder_config=DecoderAttackConfig(num_blocks=0, channels=8, convergence_check=False),
                         optimize_config=OptimizeAttackConfig(steps=4, tv_weight=1.0))
    assert trained.started_from is not None and trained.extra["decoder_val_mse"] == trained.started_from.best_val_mse()
    assert list(trained.extra["val_mse_by_tv_weight"]) == ["1.0"]
    trained.started_from.history.append({"epoch": 3, "val_mse": 1e-9})  # a decoder still improving at its end
    assert trained.still_improving()


def test_an_optimisation_stops_at_the_next_step_when_cancelled(digits: torch.Tensor) -> None:
    encoder = Unshuffle()
    steps: list[int] = []
    config = OptimizeAttackConfig(steps=10_000)
    inverter = FeatureMatchingInverter(encoder, ObfuscationConfig(), config, 0.0, digits[0],
                                       monitor=ProgressMonitor(should_stop=lambda: len(steps) >= 3))
    with pytest.raises(AttackCancelled):
        inverter.invert(encoder(digits).detach(), on_step=lambda step, rows, x: steps.append(step))
    assert steps == [1, 2, 3]


def test_restarts_keep_per_image_the_start_with_the_lowest_objective(digits: torch.Tensor) -> None:
    encoder = Unshuffle()
    with torch.no_grad():
        z = obfuscate(encoder(digits), ObfuscationConfig(noise_std=0.1), torch.Generator().manual_seed(0))
    obfuscation = ObfuscationConfig(noise_std=0.1)
    kept = torch.ones_like(z)
    one = FeatureMatchingInverter(encoder, obfuscation, OptimizeAttackConfig(steps=3), 1.0, digits.mean(0))
    three = FeatureMatchingInverter(encoder, obfuscation, OptimizeAttackConfig(steps=3, restarts=3), 1.0,
                                    digits.mean(0))
    with torch.no_grad():
        single, best = one(z), three(z)
        assert (three._objective(encoder, best, z, kept) <= one._objective(encoder, single, z, kept) + 1e-3).all()



def test_progress_is_one_monotone_fraction_over_the_chunks_the_evaluation_sends(digits: torch.Tensor) -> None:
    encoder = Unshuffle()
    seen: list[tuple[float, str]] = []
    inverter = FeatureMatchingInverter(encoder, ObfuscationConfig(), OptimizeAttackConfig(steps=3, batch_size=5),
                                       0.0, digits[0])
    inverter.track(ProgressMonitor(progress=lambda fraction, message: seen.append((fraction, message))), 24)
    z = encoder(digits).detach()
    for chunk in (z[:16], z[16:]):  # as the evaluation code calls it, chunk by chunk
        inverter(chunk)
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert seen[-1][1] == "optimize τ=0: images 22-24 of 24, step 3/3"  # chunk 17-24 in batches of 5
