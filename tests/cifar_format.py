"""CIFAR-10 files in the real python-pickle layout, small enough for tests.

``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` as the official
release ships them. torchvision verifies each file against the release's md5, so
callers patch ``CIFAR10.train_list/test_list/meta`` with the digests returned here.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_pickle(path: Path, payload: dict) -> str:
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, labels: list[int], learnable: bool) -> np.ndarray:
    """(n, 3072) uint8 rows (R plane, G, B); ``learnable``: a class-coloured square on noise."""
    data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    if learnable:
        planes = data.reshape(len(labels), 3, 32, 32)
        planes //= 3
        for row, label in enumerate(labels):
            top, left = 3 * (label % 5) + 2, 14 * (label // 5) + 2
            planes[row, label % 3, top : top + 14, left : left + 14] = 255
    return data


def write_cifar10(root: Path, per_batch: int = 4, learnable: bool = False,
                  seed: int = 0) -> tuple[dict[str, str], np.ndarray, list[int]]:
    """Write the files under ``root``; returns (md5 by file, test pixels, test labels)."""
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    digests: dict[str, str] = {}
    test_data, test_labels = np.zeros(0), []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        data = _images(rng, labels, learnable)
        digests[name] = _write_pickle(folder / name, {
            "batch_label": name, "labels": labels, "data": data,
            "filenames": [f"img_{name}_{i}.png" for i in range(per_batch)],
        })
        if name == "test_batch":
            test_data, test_labels = data, labels
    digests["batches.meta"] = _write_pickle(folder / "batches.meta", {
        "num_cases_per_batch": per_batch, "label_names": CIFAR_LABELS, "num_vis": 3072,
    })
    return digests, test_data, test_labels


def accept_digests(monkeypatch: pytest.MonkeyPatch, digests: dict[str, str]) -> None:
    """Make torchvision's integrity check accept the files written by ``write_cifar10``."""
    train_list = [[f"data_batch_{i}", digests[f"data_batch_{i}"]] for i in range(1, 6)]
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", digests["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": digests["batches.meta"]})
