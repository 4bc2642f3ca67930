"""Fixtures of the attack tests: a real bundle of a digits encoder and its attacker features."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from attack_helpers import build_digits_model, write_digits_bundle

from attacker.attacks import FeatureSet, compute_feature_set, load_images


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """The attack tests' small convolutions run several times faster on one thread than on two
    when other jobs share the cores (thread oversubscription); restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def clean_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noise-free, undefended bundle; its manifest records an entropy bound and ξ to pass through."""
    out = tmp_path_factory.mktemp("attack-bundles") / "clean"
    return write_digits_bundle(out, 0.0, metrics={"accuracy": 0.1, "entropy_bound": -1.25, "mse_bound_xi": 0.0042})


@pytest.fixture(scope="session")
def digits_feature_sets() -> dict[str, FeatureSet]:
    """Clean features of the untrained test encoder for both digits splits."""
    encoder = build_digits_model().encoder
    return {split: compute_feature_set(encoder, load_images("digits", split)) for split in ("train", "test")}
