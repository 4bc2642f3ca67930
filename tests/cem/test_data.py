"""Data sets: digits as scikit-learn ships them, its fixed split, CIFAR-10 from real files, ImageFolder, errors.

The CIFAR-10 files are written in the real python-pickle layout (``data_batch_1..5``,
``test_batch``, ``batches.meta`` under ``cifar-10-batches-py``). torchvision
verifies each file against the md5 of the official release; a tiny file cannot
match those digests, so the loading test substitutes the expected-digest table
with the digests of the files it wrote (torchvision's own check still runs), and
a second test shows that without that substitution the tiny files are rejected
with a clear error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_format import CIFAR_FOLDER, accept_digests, write_cifar10
from image_folder_format import write_png_tree
from PIL import Image

from attacker.attacks.data import INFER_FIT_FRACTION, load_images
from cem.data import load_dataset
from cem.data.digits import digits_arrays, digits_split_indices
from cem.errors import DatasetNotFoundError, UnknownNameError


def test_digits_split_is_fixed_disjoint_and_complete() -> None:
    train, info = load_dataset("digits", "train")
    test, _ = load_dataset("digits", "test")
    assert (len(train), len(test)) == (1258, 539)
    train_idx, test_idx = digits_split_indices(1797)
    assert set(train_idx).isdisjoint(test_idx) and len(set(train_idx) | set(test_idx)) == 1797
    again, _ = load_dataset("digits", "test")
    assert torch.equal(test.tensors[0], again.tensors[0])
    x, y = test[0]
    assert x.shape == (1, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and 0 <= int(y) < 10
    assert info.num_classes == 10 and info.in_channels == 1


def test_digits_are_scikit_learns_load_digits_read_without_importing_scikit_learn() -> None:
    script = ("import sys; from cem.data.digits import digits_arrays; pixels, labels = digits_arrays(); "
              "assert 'sklearn' not in sys.modules, 'loading digits imported scikit-learn'; "
              "print(pixels.shape, labels.shape)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "(1797, 8, 8) (1797,)", done.stderr
    from sklearn.datasets import load_digits

    reference = load_digits()
    pixels, labels = digits_arrays()
    assert np.array_equal(pixels, reference.images) and np.array_equal(labels, reference.target)


def test_cifar10_loader_reads_real_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digests, test_data, test_labels = write_cifar10(tmp_path)
    accept_digests(monkeypatch, digests)
    train, info = load_dataset("cifar10", "train", data_dir=tmp_path)
    test, _ = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert (len(train), len(test)) == (5 * 4, 4)
    assert info.name == "cifar10" and info.class_names[0] == "airplane" and info.mean[0] == pytest.approx(0.4914)
    image, label = test[2]
    expected = torch.from_numpy(test_data[2].reshape(3, 32, 32).astype(np.float32) / 255.0)
    assert image.shape == (3, 32, 32) and label == test_labels[2]
    assert torch.allclose(image, expected, atol=1e-6)
    augmented, _ = load_dataset("cifar10", "train", data_dir=tmp_path, augment=True)
    assert augmented[0][0].shape == (3, 32, 32)


def test_cifar10_files_that_fail_verification_are_a_clear_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # real layout, but not the official release's md5s
    with pytest.raises(DatasetNotFoundError, match=rf"expected cifar10 files in .*{CIFAR_FOLDER}.*corrupted"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_folder_names_the_expected_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError, match=rf"expected {name} files in {tmp_path / 'nowhere'}"):
        load_dataset(name, "train", data_dir=tmp_path / "nowhere")


def test_dataset_without_data_dir_asks_for_it() -> None:
    with pytest.raises(DatasetNotFoundError, match="needs --data-dir"):
        load_dataset("cifar10", "train")


def test_image_folder_reads_png_tree(tmp_path: Path) -> None:
    write_png_tree(tmp_path, ("train", "val"), ("cat", "dog"), ((40, 40), (40, 40)), seed=1)
    train, info = load_dataset("imagefolder", "train", data_dir=tmp_path)
    test, _ = load_dataset("imagefolder", "test", data_dir=tmp_path)
    assert len(train) == 4 and len(test) == 4
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    image, label = test[3]
    assert Path(test.samples[3][0]).parent.name == info.class_names[label]
    assert image.shape == (3, 32, 32) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0


def write_class_coded_tree(root: Path, classes: int, per_class: int) -> None:
    """``root/test/c<k>/<i>.png``, 40x40 RGB whose red channel is 20·k + i, so content names the class."""
    for k in range(classes):
        folder = root / "test" / f"c{k}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.zeros((40, 40, 3), dtype=np.uint8)
            pixels[..., 0] = 20 * k + i
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def test_image_folder_test_split_is_a_fixed_class_mixing_permutation(tmp_path: Path) -> None:
    write_class_coded_tree(tmp_path, classes=3, per_class=10)
    test, info = load_dataset("imagefolder", "test", data_dir=tmp_path)
    images = load_images("imagefolder", "test", data_dir=tmp_path)  # the attacker's view, in the data set's order
    labels = [int(label) for _, label in test]
    red = (images[:, 0, 0, 0] * 255).round().long()  # 20·k + i
    assert labels == [int(v) // 20 for v in red]  # every label is its file's class
    assert sorted(int(v) for v in red) == [20 * k + i for k in range(3) for i in range(10)]  # each file once
    assert labels != sorted(labels)
    scored = labels[int(len(labels) * INFER_FIT_FRACTION):]  # what the ``infer`` protocol scores
    assert len(scored) == 3 and len(set(scored)) >= 2
    again, _ = load_dataset("imagefolder", "test", data_dir=tmp_path)
    assert again.samples == test.samples and torch.equal(load_images("imagefolder", "test", data_dir=tmp_path), images)
    assert info.class_names == ("c0", "c1", "c2")


def test_missing_image_folder_names_the_expected_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"expected an ImageFolder tree at .*train"):
        load_dataset("facescrub", "train", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"test or .*val or .*validate"):
        load_dataset("tinyimagenet", "test", data_dir=tmp_path)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"expected a dataset in \[.*digits.*\], got 'mnist'"):
        load_dataset("mnist")
