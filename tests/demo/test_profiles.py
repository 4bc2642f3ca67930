"""Which attacks a demo runs: the profile's, unless the command line names others."""

from __future__ import annotations

import pytest

from cem.errors import CEMError
from demo.pipeline import DemoConfig


def test_the_fast_profile_runs_the_decoder_attack_and_the_paper_profile_both() -> None:
    assert DemoConfig(profile="fast").attack_names == ("decoder",)
    assert DemoConfig(profile="paper").attack_names == ("decoder", "gan")
    assert DemoConfig(profile="fast", attacks=("gan",)).attack_names == ("gan",)


def test_an_unknown_attack_is_refused_before_anything_runs() -> None:
    with pytest.raises(CEMError, match="expected an attack in"):
        DemoConfig(attacks=("nope",))


def test_the_demo_runs_only_embedded_data_sets() -> None:
    from cem.data import available_datasets, load_dataset
    from demo.profiles import DEMO_DATASETS

    assert DemoConfig().dataset == "digits" and set(DEMO_DATASETS) <= set(available_datasets())
    for name in DEMO_DATASETS:  # no --data-dir, no download: shipped inside installed packages
        test, info = load_dataset(name, "test")
        assert len(test) > 0 and info.image_size == 32
    with pytest.raises(CEMError, match="expected an embedded data set"):
        DemoConfig(dataset="cifar10")


def test_the_fast_profile_trains_its_decoder_at_least_5600_steps() -> None:
    """100 epochs converged digits' ``train`` column (67 steps an epoch) but not ``infer`` (28): 200 epochs of
    ``infer`` did, 5,600 steps (demo.profiles); the other profiles keep the attack's default, no minimum."""
    from demo.profiles import PROFILES

    fast = PROFILES["fast"]
    assert (fast.decoder_epochs, fast.decoder_min_steps) == (100, 5600)
    assert PROFILES["paper"].decoder_min_steps is None and PROFILES["tiny"].decoder_min_steps is None
