"""MNIST-5k: the pinned split (deterministic, stratified, disjoint), exact padding, no network, clear errors."""

from __future__ import annotations

import gzip
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from cem.data import load_dataset
from cem.data import mnist5k as module
from cem.data.mnist5k import (
    MNIST5K_VALIDATION_FRACTION,
    mnist5k_arrays,
    mnist5k_file,
    mnist5k_info,
    mnist5k_split_indices,
    mnist5k_validation_indices,
)
from cem.data.validation import carve_validation
from cem.errors import DatasetError

# SHA-256 of the train, test, fit and validation indices (int64, in their fixed orders).
SPLIT_SHA256 = "f131c1c2e6d1511e185af32991c94ec4878383b8b042961723d587b0743035be"


def test_split_indices_are_pinned_stratified_disjoint_and_complete() -> None:
    train, test = mnist5k_split_indices()
    fit, val = mnist5k_validation_indices(MNIST5K_VALIDATION_FRACTION)
    digest = hashlib.sha256()
    for part in (train, test, fit, val):
        digest.update(np.asarray(part, dtype=np.int64).tobytes())
    assert digest.hexdigest() == SPLIT_SHA256
    _, labels = mnist5k_arrays()
    assert (len(train), len(test), len(fit), len(val)) == (4000, 1000, 3500, 500)
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 5000
    assert set(fit).isdisjoint(val) and set(fit) | set(val) == set(range(4000))
    assert np.bincount(labels[test]).tolist() == [100] * 10
    assert np.bincount(labels[train][val]).tolist() == [50] * 10
    assert len(set(labels[test[:10]])) > 1, "the test split is class-mixed (the infer protocol cuts it at 90 %)"


def test_the_trainer_carves_mnist5k_by_its_own_stratified_validation() -> None:
    fit, val = carve_validation("mnist5k", 4000, MNIST5K_VALIDATION_FRACTION)
    assert np.array_equal(val, mnist5k_validation_indices(MNIST5K_VALIDATION_FRACTION)[1])
    other_fit, other_val = carve_validation("digits", 1258, 0.2)
    assert len(other_val) == 252 and len(other_fit) == 1006


def test_padding_puts_every_recorded_pixel_at_its_place_in_a_zero_border() -> None:
    pixels, labels = mnist5k_arrays()
    train, _ = mnist5k_split_indices()
    dataset, info = load_dataset("mnist5k", "train")
    image, label = dataset[7]
    raw = pixels[train[7]]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and int(label) == labels[train[7]]
    assert torch.equal(image[0, 2:30, 2:30], torch.from_numpy(raw.astype(np.float32) / 255.0))
    border = image[0].clone()
    border[2:30, 2:30] = 0
    assert float(border.abs().sum()) == 0.0
    assert info.native_resolution == 32 and info.quantisation_step == pytest.approx(1 / 255)


def test_normalisation_statistics_are_the_training_splits() -> None:
    dataset, info = load_dataset("mnist5k", "train")
    images = dataset.tensors[0]
    assert info.mean[0] == pytest.approx(float(images.mean()), abs=1e-4)
    assert info.std[0] == pytest.approx(float(images.std()), abs=1e-4)
    assert info.to_dict() == mnist5k_info().to_dict()


def test_loading_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("mnist5k must load without the network")

    mnist5k_arrays.cache_clear()
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    test, _ = load_dataset("mnist5k", "test")
    assert len(test) == 1000


def test_a_changed_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.loadtxt(mnist5k_file(), delimiter=",", dtype=np.uint8)
    rows[0, 300] ^= 1
    changed = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(changed, "wt") as file:
        np.savetxt(file, rows, fmt="%d", delimiter=",")
    monkeypatch.setattr(module, "mnist5k_file", lambda: changed)
    mnist5k_arrays.cache_clear()
    try:
        with pytest.raises(DatasetError, match="expected the mnist_5k.csv.gz content"):
            mnist5k_arrays()
        changed.write_bytes(b"not gzip")
        with pytest.raises(DatasetError, match="expected a readable mnist_5k.csv.gz"):
            mnist5k_arrays()
    finally:
        mnist5k_arrays.cache_clear()
