"""The decoder attack's least optimizer steps (``DecoderAttackConfig.min_steps``): the epochs are raised to reach
them, before the half-budget check halves them, wherever the decoder config trains a decoder. A synthetic split
whose epoch is 3 steps keeps every run to a fraction of a second (32x32 images: the GAN's critic needs them)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from synthetic_split import synthetic_split

from attacker.attacks import (
    DecoderAttackConfig,
    GanAttackConfig,
    ProgressMonitor,
    run_attack,
    train_decoder_attack,
)
from attacker.attacks.decoder import resolved_epochs, steps_per_epoch
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig

# 24 fit images in batches of 8 (no shrinking): 3 optimizer steps an epoch
TINY = DecoderAttackConfig(epochs=2, batch_size=8, min_steps_per_epoch=0, num_blocks=0, channels=4,
                           convergence_check=False)
NOISE = ObfuscationConfig(noise_std=0.1)


_split = synthetic_split


def _train(config: DecoderAttackConfig) -> tuple[dict[str, torch.Tensor], list[float | None], list[str]]:
    """The trained weights, the validation curve and the progress messages (one per optimizer step)."""
    messages: list[str] = []
    trained = train_decoder_attack(_split(), NOISE, config, seed=0,
                                   monitor=ProgressMonitor(progress=lambda _, message: messages.append(message)))
    return trained.network.state_dict(), [row["val_mse"] for row in trained.history], messages


def test_an_epoch_is_the_batch_rules_global_batches() -> None:
    assert steps_per_epoch(24, TINY) == 3
    paper = DecoderAttackConfig()  # the digits columns: batch 17 on 1,132 images, 16 on 437 (a last batch of 5)
    assert (steps_per_epoch(1132, paper), steps_per_epoch(437, paper)) == (67, 28)
    assert resolved_epochs(437, dataclasses.replace(paper, epochs=100, min_steps=5600)) == 200
    assert resolved_epochs(1132, dataclasses.replace(paper, epochs=100, min_steps=5600)) == 100


@pytest.mark.parametrize(("min_steps", "epochs"), [(0, 2), (6, 2), (7, 3), (10, 4)])
def test_min_steps_raise_the_epochs_until_the_run_takes_them(min_steps: int, epochs: int) -> None:
    _, curve, messages = _train(dataclasses.replace(TINY, min_steps=min_steps))
    assert len(curve) == epochs  # the epochs run, as the audit's per-column detail reports them
    assert len(messages) == 3 * epochs >= min_steps and messages[-1] == f"decoder attack: epoch {epochs}/{epochs}"


def test_a_minimum_the_epochs_already_reach_changes_nothing() -> None:
    weights, curve, _ = _train(TINY)
    for min_steps in (0, 6):  # 0: no minimum; 6: exactly the 2 epochs' steps
        same_weights, same_curve, _ = _train(dataclasses.replace(TINY, min_steps=min_steps))
        assert same_curve == curve
        assert all(torch.equal(same_weights[name], value) for name, value in weights.items())


def test_the_half_budget_check_halves_the_raised_epochs() -> None:
    config = dataclasses.replace(TINY, convergence_check=True, min_steps=12)  # 2 epochs raised to 4
    messages: list[str] = []
    trained = train_decoder_attack(_split(), NOISE, config, seed=0,
                                   monitor=ProgressMonitor(progress=lambda _, message: messages.append(message)))
    assert trained.half_budget is not None and trained.half_budget.half_epochs == 2
    assert messages[5] == "decoder attack, half budget: epoch 2/2" and messages[-1] == "decoder attack: epoch 4/4"
    assert len(messages) == 3 * (2 + 4) and len(trained.history) in (2, 4)  # the stronger run is returned


def test_run_attack_keeps_the_minimum_when_it_sets_the_epochs() -> None:
    """``epochs`` replaces the decoder config's epochs and nothing else: the minimum still raises them, once."""
    trained = run_attack("decoder", _split(), NOISE, epochs=1, decoder_config=dataclasses.replace(TINY, min_steps=7))
    assert len(trained.history) == 3


def test_the_gan_pretrains_its_decoder_to_the_minimum_but_not_its_adversarial_epochs() -> None:
    messages: list[str] = []
    gan = GanAttackConfig(epochs=2, batch_size=8, min_steps_per_epoch=0, n_critic=1, critic_dim=4)
    trained = run_attack("gan", _split(), NOISE, decoder_config=dataclasses.replace(TINY, min_steps=10),
                         gan_config=gan, monitor=ProgressMonitor(progress=lambda _, message: messages.append(message)))
    assert "decoder attack: epoch 4/4" in messages  # ceil(2 / 3) = 1 pre-training epoch, raised to 4
    assert len(trained.history) == gan.epochs


def test_a_negative_minimum_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected min_steps_per_epoch and min_steps >= 0, got 0 and -1"):
        dataclasses.replace(TINY, min_steps=-1)
