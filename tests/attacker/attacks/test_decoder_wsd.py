"""The decoder attack under ``wsd``: its convergence check branches the half-budget run off the full one, and
both are exactly what runs of their own would have been, for the price of the half run's decay."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from attacker.attacks import AttackSplit, DecoderAttackConfig, FeatureSet, ProgressMonitor, train_decoder_attack
from attacker.attacks.decoder import decay_epochs
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig

# 24 fit images in batches of 8: 3 optimizer steps an epoch; 10 epochs, the half run 5 (its decay 1 epoch)
WSD = DecoderAttackConfig(epochs=10, batch_size=8, min_steps_per_epoch=0, num_blocks=0, channels=4, schedule="wsd")
NOISE = ObfuscationConfig(noise_std=0.05)


def _split() -> AttackSplit:
    """Images the features determine (an upsampled channel), so the validation MSE keeps falling and the best
    epochs of the half and the full run are their own, not the shared stretch's."""
    generator = torch.Generator().manual_seed(0)

    def features(n: int) -> FeatureSet:
        z = torch.rand(n, 4, 8, 8, generator=generator)
        return FeatureSet(F.interpolate(z[:, :1], size=32), z)

    return AttackSplit("train", features(24), features(8), features(4))


def _train(config: DecoderAttackConfig) -> tuple[object, list[str]]:
    messages: list[str] = []
    trained = train_decoder_attack(_split(), NOISE, config, seed=0,
                                   monitor=ProgressMonitor(progress=lambda _, message: messages.append(message)))
    return trained, messages


def test_the_branched_half_and_full_runs_are_the_runs_of_their_own() -> None:
    checked, messages = _train(WSD)
    alone_half, _ = _train(dataclasses.replace(WSD, epochs=5, convergence_check=False))
    alone_full, _ = _train(dataclasses.replace(WSD, convergence_check=False))
    check = checked.half_budget
    assert check is not None and check.half_epochs == 5
    assert check.half_val_mse == alone_half.best_val_mse()
    assert check.full_val_mse == alone_full.best_val_mse()
    assert alone_half.best_epoch == 5 and alone_full.best_epoch == 10  # each run's own decay made its best
    # trained: the full run's 10 epochs and the half run's 1 epoch of decay, 3 steps each; not 10 + 5
    assert len(messages) == 3 * (10 + decay_epochs(5, WSD)) == 33
    assert messages.count("decoder attack, half budget: epoch 5/5") == 3
    returned = checked.network.state_dict()
    assert all(torch.equal(returned[name], value) for name, value in alone_full.network.state_dict().items())


def test_cosine_still_trains_the_half_run_on_its_own() -> None:
    _, messages = _train(dataclasses.replace(WSD, schedule="cosine"))
    assert len(messages) == 3 * (5 + 10)


@pytest.mark.parametrize(("epochs", "fraction", "expected"), [(10, 0.2, 2), (5, 0.2, 1), (3, 0.01, 1), (4, 1.0, 4)])
def test_the_decay_is_a_share_of_the_epochs_at_least_one(epochs: int, fraction: float, expected: int) -> None:
    assert decay_epochs(epochs, dataclasses.replace(WSD, decay_fraction=fraction)) == expected


@pytest.mark.parametrize("change", [{"schedule": "linear"}, {"decay_fraction": 0.0}, {"decay_fraction": 1.5}])
def test_an_unknown_schedule_or_decay_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(WSD, **change)
