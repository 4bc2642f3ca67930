"""The one home of the test suite's models and bundles (a pytest plugin, loaded by ``tests/conftest.py``).

Every test that needs a split model on disk uses a real bundle written here,
never a mock: ``digits_bundle`` (trained for a few seconds, noise 0.1),
``untrained_bundle`` (random weights, no noise: what the attack tests invert),
``no_defense_bundle`` (written by ``cem-train --bottleneck none`` itself),
``bundle_copy`` (a private copy of ``digits_bundle`` a test may damage) and
``resnet20_bundle`` (an untrained ResNet-20 split for tiny TinyImageNet files).
The builders are importable by name (``from bundle_fixtures import ...``) for
tests that write bundles of their own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tinyimagenet_format import write_tinyimagenet
from torch.utils.data import DataLoader

from cem.bundle import save_bundle
from cem.data import DatasetInfo, load_dataset
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig, obfuscate

DIGITS_WIDTH = 0.25
TINY_NOISE_STD = 0.1
NO_DEFENSE_WIDTH = 0.125
RESNET20_WIDTH = 0.125
TINYIMAGENET_WNIDS = ("n01443537", "n01629819", "n01641577")


def build_digits_model(seed: int = 0, width: float = DIGITS_WIDTH) -> SplitModel:
    """An untrained digits split model, in eval mode. Random conv features keep most of the image,
    which is what the attack tests need to find."""
    _, info = load_dataset("digits", split="train")
    torch.manual_seed(seed)
    config = SplitModelConfig(in_channels=1, num_classes=10, width=width, mean=info.mean, std=info.std)
    return SplitModel(config).eval()


def train_tiny_digits_model(steps: int = 80, seed: int = 0, noise_std: float = TINY_NOISE_STD) -> SplitModel:
    """``build_digits_model(seed)`` after ``steps`` SGD steps on digits with Gaussian noise on the features."""
    model = build_digits_model(seed).train()
    train, _ = load_dataset("digits", split="train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    noise = ObfuscationConfig(noise_std=noise_std)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    step = 0
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


def write_digits_bundle(out: Path, noise_std: float, model: SplitModel | None = None, metrics: dict | None = None,
                        cem: dict | None = None, note: str = "untrained attack-test encoder") -> Path:
    """Write ``model`` (default: ``build_digits_model()``) as a real bundle folder at ``out``."""
    _, info = load_dataset("digits", split="train")
    save_bundle(
        out,
        model if model is not None else build_digits_model(),
        noise_std=noise_std,
        dataset=info.to_dict(),
        defenses=[{"name": "noise", "std": noise_std}] if noise_std > 0 else [],
        cem=cem,
        metrics=metrics or {},
        training={"note": note},
    )
    return out


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle folder (manifest + two safetensors files) of a briefly trained digits model."""
    out = tmp_path_factory.mktemp("bundles") / "digits-tiny"
    return write_digits_bundle(out, TINY_NOISE_STD, model=train_tiny_digits_model(), note="test fixture")


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noise-free, undefended, untrained bundle; its manifest records an entropy bound and ξ to pass through."""
    out = tmp_path_factory.mktemp("bundles") / "untrained"
    return write_digits_bundle(out, 0.0, metrics={"accuracy": 0.1, "entropy_bound": -1.25, "mse_bound_xi": 0.0042})


@pytest.fixture(scope="session")
def no_defense_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's No_defense baseline written by ``cem-train --bottleneck none`` itself (one short epoch):
    no bottleneck, no Sigmoid, no noise, no CEM; the edge sends raw (128·width, 8, 8) ReLU features."""
    from training.cli import main as train_main  # imported here: only tests that use the fixture pay for it

    out = tmp_path_factory.mktemp("bundles") / "no-defense"
    argv = ["--dataset", "digits", "--bottleneck", "none", "--noise-std", "0", "--cem-lambda", "0",
            "--epochs", "1", "--width", str(NO_DEFENSE_WIDTH), "--no-progress", "--out", str(out)]
    assert train_main(argv) == 0
    return out


@pytest.fixture
def bundle_copy(digits_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the digits bundle that a test may damage."""
    return Path(shutil.copytree(digits_bundle, tmp_path / "bundle"))


def build_resnet20_model(info: DatasetInfo, seed: int = 0) -> SplitModel:
    """An untrained ResNet-20 split at its default cut (5) for ``info``'s images, in eval mode."""
    torch.manual_seed(seed)
    config = SplitModelConfig(arch="resnet20", width=RESNET20_WIDTH, in_channels=info.in_channels,
                              image_size=info.image_size, num_classes=info.num_classes, mean=info.mean, std=info.std)
    return SplitModel(config).eval()


@pytest.fixture(scope="session")
def resnet20_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data_dir, bundle): tiny TinyImageNet files in the released layout (3 classes, 6 train and 4 val images
    each) and a real bundle of an untrained ResNet-20 split for them, with the profile's σ = 0.025."""
    root = tmp_path_factory.mktemp("tinyimagenet")
    data = write_tinyimagenet(root / "tiny-imagenet-200", TINYIMAGENET_WNIDS, train_per_class=6, val_per_class=4)
    _, info = load_dataset("tinyimagenet", "train", data_dir=data)
    out = root / "resnet20"
    save_bundle(out, build_resnet20_model(info), noise_std=0.025, dataset=info,
                defenses=[{"name": "noise", "std": 0.025}], training={"note": "untrained ResNet-20 test bundle"})
    return data, out
