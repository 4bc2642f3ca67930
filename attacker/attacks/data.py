"""The attacker's data: images, their clean features, and the two evaluation protocols.

Threat model (white-box, paper §3.1 / §5.1): the attacker holds the encoder and
the client transform (σ and any dropout/top-k) from the bundle, and images from
the same distribution. It computes each image's clean features once per attack
(encoder in eval mode, no grad) and draws a fresh client transform per batch with
``cem.obfuscation.obfuscate``, so it trains on exactly what crosses the wire.

The two protocols (the paper's Table 1 columns, reference_notes §5.1):

* ``train``: the attacker's data is the data set's train split; it is scored on
  the whole test split.
* ``infer``: the attacker's data is the first 90% of the test split (in the data
  set's fixed order); it is scored on the last 10%.

In both, a validation part is carved out of the attacker's own data (a seeded
random ``val_fraction``) for checkpoint selection; scored images are never used
for any choice (the reference selected on test batches, B5/B29). Class labels, when
loaded (``load_labeled_images``), travel with their images through every subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from cem.data import load_dataset
from cem.errors import ConfigError

MODES = ("train", "infer")
INFER_FIT_FRACTION = 0.9


@dataclass(frozen=True)
class FeatureSet:
    """Images (N, C, S, S) in [0, 1], their clean encoder features (N, *feature_shape) and, when the
    attacker knows them, their class labels (N,) int64; all on one device.

    The labels are never used by the attacks; they travel with the images so that an evaluation
    classifier can be trained on the attacker's data and reconstructions scored for identity
    leakage (``attacker.attacks.identity``).
    """

    images: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.features.shape[0]:
            raise ConfigError(
                f"expected as many features as images, got {self.features.shape[0]} and {self.images.shape[0]}"
            )
        labels = self.labels
        if labels is None:
            return
        if labels.dim() != 1 or labels.shape[0] != self.images.shape[0] or labels.dtype != torch.int64:
            raise ConfigError(
                f"expected labels of shape ({self.images.shape[0]},) and dtype int64, got {tuple(labels.shape)} "
                f"and {labels.dtype}"
            )
        if labels.device != self.images.device:
            raise ConfigError(f"expected labels on the images' device {self.images.device}, got {labels.device}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor | slice) -> FeatureSet:
        labels = None if self.labels is None else self.labels[index]
        return FeatureSet(self.images[index], self.features[index], labels)


@dataclass(frozen=True)
class AttackSplit:
    """One protocol: ``fit`` trains the attack, ``val`` selects its checkpoint, ``eval`` scores it."""

    mode: str
    fit: FeatureSet
    val: FeatureSet
    eval: FeatureSet


def load_labeled_images(
    dataset: str, split: str, data_dir: str | Path | None = None, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of one split, un-augmented, in the data set's order, with their class labels:
    (N, C, S, S) float in [0, 1] and (N,) int64."""
    data, _ = load_dataset(dataset, split=split, data_dir=data_dir)
    batches = list(DataLoader(data, batch_size=batch_size, shuffle=False))
    if not batches:
        raise ConfigError(f"expected images in the {split} split of {dataset!r}, got none")
    images = torch.cat([images for images, _ in batches]).float()
    labels = torch.cat([torch.as_tensor(labels) for _, labels in batches]).long()
    return images, labels


def load_images(dataset: str, split: str, data_dir: str | Path | None = None, batch_size: int = 512) -> torch.Tensor:
    """All images of one split, un-augmented, in the data set's order: (N, C, S, S) float in [0, 1]."""
    images, _ = load_labeled_images(dataset, split, data_dir, batch_size)
    return images


@torch.no_grad()
def compute_feature_set(
    encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *, batch_size: int = 256
) -> FeatureSet:
    """Clean features of ``images`` (N, C, S, S), encoder in eval mode; images, features and ``labels``
    (N,) int64, when given, are all kept on the encoder's device."""
    device = next(encoder.parameters()).device
    images = images.to(device)
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = [encoder(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    finally:
        encoder.train(was_training)
    return FeatureSet(images, torch.cat(chunks), None if labels is None else labels.to(device))


def build_attack_split(
    mode: str, train: FeatureSet, test: FeatureSet, *, val_fraction: float = 0.1, seed: int = 0
) -> AttackSplit:
    """Apply protocol ``mode`` (see the module docstring) to the train and test splits."""
    if mode not in MODES:
        raise ConfigError(f"expected an attack mode in {MODES}, got {mode!r}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"expected val_fraction in [0, 1), got {val_fraction}")
    if mode == "train":
        attacker, scored = train, test
    else:
        cut = int(len(test) * INFER_FIT_FRACTION)
        attacker, scored = test.subset(slice(0, cut)), test.subset(slice(cut, None))
    n_val = int(round(len(attacker) * val_fraction))
    if len(scored) == 0 or len(attacker) - n_val < 1:
        raise ConfigError(
            f"expected images to train on and to score in mode {mode!r}, got {len(attacker) - n_val} and {len(scored)}"
        )
    order = torch.randperm(len(attacker), generator=torch.Generator().manual_seed(seed))
    order = order.to(attacker.images.device)
    return AttackSplit(
        mode=mode,
        fit=attacker.subset(order[n_val:]),
        val=attacker.subset(order[:n_val]),
        eval=scored,
    )
