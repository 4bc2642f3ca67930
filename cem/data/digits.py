"""scikit-learn's bundled handwritten digits, the embedded default data set.

1,797 grey 8x8 images (values 0..16) resized to 32x32 so the VGG cut geometry of
the paper (8x8 features at cut 4) holds. The train/test split is fixed by a
seed that is part of the data set's definition, not of the run, so every part
of the system agrees on which images are held out.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from cem.data.packaged import packaged_file, read_pinned_table
from cem.data.registry import DataRequest, DatasetInfo, register_dataset

DIGITS_IMAGE_SIZE = 32
DIGITS_NATIVE_SIZE = 8
DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 20250611
DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the sklearn package, as load_digits reads it
# cem.data.packaged.content_digest of the parsed pixels (1797 x 64, 0..16) and labels.
DIGITS_CONTENT_SHA256 = "65e5b4619795efb40c1082f4c350c049e4ad552200d369b6ae99e21eef5e72c5"


def digits_info() -> DatasetInfo:
    return DatasetInfo(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=DIGITS_IMAGE_SIZE,
        mean=(0.3053,),
        std=(0.3236,),
        class_names=tuple(str(d) for d in range(10)),
        native_size=DIGITS_NATIVE_SIZE,
        quantisation_step=1.0 / 16.0,  # sklearn's digits hold the values 0..16
    )


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (1797, 8, 8) in 0..16, labels int64 (1797,)): scikit-learn's ``load_digits``, read from
    its packaged file (``cem.data.packaged``: importing scikit-learn would cost every CLI start a second)."""
    path = packaged_file("sklearn", *DIGITS_FILE, install_hint="pip install scikit-learn")
    pixels, labels = read_pinned_table(path, rows=1797, values=DIGITS_NATIVE_SIZE**2, name="digits.csv.gz",
                                       expected_sha256=DIGITS_CONTENT_SHA256)
    return pixels.reshape(-1, DIGITS_NATIVE_SIZE, DIGITS_NATIVE_SIZE), labels


def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = digits_arrays()
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    images = F.interpolate(images, size=DIGITS_IMAGE_SIZE, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return images, torch.from_numpy(labels)


def digits_split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, stratification-free permutation split shared by every consumer."""
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n)
    n_test = int(round(n * DIGITS_TEST_FRACTION))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


@register_dataset("digits")
def load_digits_dataset(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    images, labels = _digits_tensors()
    train_idx, test_idx = digits_split_indices(len(labels))
    idx = torch.from_numpy(train_idx if request.split == "train" else test_idx)
    return TensorDataset(images[idx], labels[idx]), digits_info()
