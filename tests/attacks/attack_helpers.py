"""Builders shared by the attack tests: untrained digits models written as real bundles."""

from __future__ import annotations

from pathlib import Path

import torch

from cem.bundle import save_bundle
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig

ENCODER_WIDTH = 0.25


def build_digits_model(seed: int = 0) -> SplitModel:
    """An untrained digits split model: random conv features keep most of the image, which the attack must find."""
    _, info = load_dataset("digits", split="train")
    torch.manual_seed(seed)
    config = SplitModelConfig(in_channels=1, num_classes=10, width=ENCODER_WIDTH, mean=info.mean, std=info.std)
    return SplitModel(config).eval()


def write_digits_bundle(out: Path, noise_std: float, metrics: dict | None = None, cem: dict | None = None) -> Path:
    _, info = load_dataset("digits", split="train")
    save_bundle(
        out,
        build_digits_model(),
        noise_std=noise_std,
        dataset=info.to_dict(),
        defenses=[{"name": "noise", "std": noise_std}] if noise_std > 0 else [],
        cem=cem,
        metrics=metrics or {},
        training={"note": "untrained attack-test encoder"},
    )
    return out
