"""TinyImageNet in its released layout: the annotated ``val`` set is the test split, with the train split's classes.

Read as a plain ImageFolder, the released ``val/`` (or the unlabelled ``test/``) is one class named
``images``, so every test label would be wrong without an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tinyimagenet_format import class_of, write_tinyimagenet

from cem.data import load_dataset
from cem.errors import DatasetError

WNIDS = ("n02124075", "n01443537", "n04067472")  # not sorted, as in the release's wnids.txt


def test_released_layout_labels_the_val_images_from_their_annotations(tmp_path: Path) -> None:
    root = write_tinyimagenet(tmp_path / "tiny-imagenet-200", WNIDS, train_per_class=2, val_per_class=3)
    train, info = load_dataset("tinyimagenet", "train", data_dir=root)
    test, test_info = load_dataset("tinyimagenet", "test", data_dir=root)
    assert info.class_names == test_info.class_names == tuple(sorted(WNIDS))
    assert (len(train), len(test), info.image_size, info.num_classes) == (6, 9, 64, 3)
    for dataset in (train, test):
        for image, label in dataset:
            assert image.shape == (3, 64, 64) and class_of(float(image[0].mean())) == label
    assert sorted(label for _, label in test) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_val_images_moved_into_class_folders_load_the_same(tmp_path: Path) -> None:
    """The reference's prepare script moves every val image to ``val/images/<wnid>/``; the annotations stay."""
    root = write_tinyimagenet(tmp_path / "tiny", WNIDS, train_per_class=1, val_per_class=2)
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        file, wnid = line.split("\t")[:2]
        (root / "val" / "images" / wnid).mkdir(exist_ok=True)
        (root / "val" / "images" / file).rename(root / "val" / "images" / wnid / file)
    test, _ = load_dataset("tinyimagenet", "test", data_dir=root)
    assert len(test) == 6 and all(class_of(float(image[0].mean())) == label for image, label in test)


def test_an_annotation_naming_no_train_class_is_a_clear_error(tmp_path: Path) -> None:
    root = write_tinyimagenet(tmp_path / "tiny", WNIDS, train_per_class=1, val_per_class=1)
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text().replace(WNIDS[0], "n99999999"))
    with pytest.raises(DatasetError, match=r"expected the class 'n99999999' of val image val_0.JPEG"):
        load_dataset("tinyimagenet", "test", data_dir=root)
