"""Fixtures of the attack tests: real bundles of digits encoders and their attacker features."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from attacker.attacks import FeatureSet, compute_feature_set, load_images
from cem.bundle import save_bundle
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig

ENCODER_WIDTH = 0.25


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """The attack tests' small convolutions run several times faster on one thread than on two
    when other jobs share the cores (thread oversubscription); restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build_digits_model(seed: int = 0) -> SplitModel:
    """An untrained digits split model: random conv features keep most of the image, which the attack must find."""
    _, info = load_dataset("digits", split="train")
    torch.manual_seed(seed)
    config = SplitModelConfig(in_channels=1, num_classes=10, width=ENCODER_WIDTH, mean=info.mean, std=info.std)
    return SplitModel(config).eval()


def write_digits_bundle(out: Path, noise_std: float, metrics: dict | None = None) -> Path:
    _, info = load_dataset("digits", split="train")
    save_bundle(
        out,
        build_digits_model(),
        noise_std=noise_std,
        dataset=info.to_dict(),
        defenses=[{"name": "noise", "std": noise_std}] if noise_std > 0 else [],
        metrics=metrics or {},
        training={"note": "untrained attack-test encoder"},
    )
    return out


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
