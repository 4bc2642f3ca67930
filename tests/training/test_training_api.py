"""The training package's public surface is pinned, and profiles resolve as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

import training
from cem.errors import ConfigError
from training import CEMConfig, CEMRegularizer, TrainConfig, resolve_config
from training.config import PROFILES


def test_public_surface_is_pinned() -> None:
    assert sorted(training.__all__) == [
        "CEMConfig", "CEMRegularizer", "Defense", "DefenseStack", "MixtureNotFittedError", "TrainConfig",
        "TrainResult", "available_defenses", "create_defense", "parse_defense", "register_defense",
        "resolve_config", "train",
    ]
    assert all(hasattr(training, name) for name in training.__all__)
    assert training.available_defenses() == ["bottleneck", "distcorr", "dropout", "noise", "patrol", "ressfl", "topk"]


def test_profile_fills_unset_fields_and_flags_override() -> None:
    resolved = resolve_config(TrainConfig(dataset="digits", out_dir=Path("x")))
    assert (resolved.width, resolved.epochs, resolved.augment) == (0.25, 20, False)
    assert resolved.cem is not None and resolved.cem.lam == resolved.cem_lambda == PROFILES["digits"].cem_lambda
    assert resolved.noise_std == 0.1 and resolved.cem.lr_coupling == "ref"
    cifar = resolve_config(TrainConfig(dataset="cifar10", out_dir=Path("x")))
    assert (cifar.noise_std, cifar.cem_lambda, cifar.cem.k) == (0.025, 16.0, 3), "the paper's defaults (§5.1)"
    # the embedded data sets' λ was chosen on their validation splits; the others take the paper's, not rescaled by N
    assert {p.cem_lambda for name, p in PROFILES.items() if name not in ("digits", "mnist5k")} == {16.0}
    assert resolved.milestones() == [5, 10, 15, 18]
    custom = resolve_config(TrainConfig(cem=CEMConfig(lam=0.5, k=5), epochs=4, width=1.0))
    assert custom.cem is not None and (custom.cem.lam, custom.cem.k, custom.epochs, custom.width) == (0.5, 5, 4, 1.0)
    assert resolve_config(TrainConfig(cem=CEMConfig(lam=0.5), cem_lambda=0.0)).cem.lam == 0.0


def test_unresolved_lambda_is_refused_by_the_plug_in() -> None:
    with pytest.raises(ConfigError, match="resolved cem lambda"):
        CEMRegularizer(CEMConfig(), noise_std=0.1, num_classes=2, dataset_size=4, image_dim=4)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        TrainConfig(epochs=0)


def test_no_bottleneck_defaults_to_the_unprotected_baseline() -> None:
    resolved = resolve_config(TrainConfig(dataset="cifar10", bottleneck=None))
    assert (resolved.noise_std, resolved.cem_lambda) == (0.0, 0.0), "No_defense: no noise, no CEM unless asked"
    with pytest.raises(ConfigError, match="--cem-lambda 0 with --bottleneck none"):
        resolve_config(TrainConfig(bottleneck=None, cem_lambda=16.0))
