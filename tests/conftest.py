"""Fixtures shared by every test area.

``digits_bundle`` is a small split model trained for a few seconds on the
embedded digits data set and written as a real bundle; tests that need a model
on disk use it instead of mocking one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from cem.bundle import save_bundle
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig, obfuscate

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TINY_NOISE_STD = 0.1


def train_tiny_digits_model(steps: int = 80, width: float = 0.25, seed: int = 0) -> SplitModel:
    torch.manual_seed(seed)
    train, info = load_dataset("digits", split="train")
    config = SplitModelConfig(in_channels=1, num_classes=10, width=width, mean=info.mean, std=info.std)
    model = SplitModel(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    noise = ObfuscationConfig(noise_std=TINY_NOISE_STD)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    step = 0
    model.train()
    while step < steps:
        for x, y in loader:
            logits = model.decoder(obfuscate(model.encoder(x), noise))
            loss = torch.nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
    return model.eval()


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle folder (manifest + two safetensors files) of a briefly trained digits model."""
    _, info = load_dataset("digits", split="train")
    out = tmp_path_factory.mktemp("bundles") / "digits-tiny"
    save_bundle(
        out,
        train_tiny_digits_model(),
        noise_std=TINY_NOISE_STD,
        dataset=info.to_dict(),
        defenses=[{"name": "noise", "std": TINY_NOISE_STD}],
        metrics={},
        training={"note": "test fixture"},
    )
    return out


NO_DEFENSE_WIDTH = 0.125


@pytest.fixture(scope="session")
def no_defense_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's No_defense baseline written by ``cem-train --bottleneck none`` itself (one short epoch):
    no bottleneck, no Sigmoid, no noise, no CEM; the edge sends raw (128·width, 8, 8) ReLU features."""
    from training.cli import main as train_main  # imported here: only tests that use the fixture pay for it

    out = tmp_path_factory.mktemp("bundles") / "no-defense"
    argv = ["--dataset", "digits", "--bottleneck", "none", "--noise-std", "0", "--cem-lambda", "0",
            "--epochs", "1", "--width", str(NO_DEFENSE_WIDTH), "--threads", "0", "--no-progress", "--out", str(out)]
    assert train_main(argv) == 0
    return out
