"""Training on an ImageFolder tree of mixed-size PNGs with the profile's augmentation on.

Real files, the real trainer: images of different sizes must be resized before the
augmentations, or the default collate cannot stack a batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from image_folder_format import write_png_tree

from cem.bundle import load_bundle
from cem.models import InversionConfig, InversionNetwork
from training import TrainConfig, train

SIZES = ((20, 30), (40, 40), (50, 17))  # (height, width)


def write_mixed_size_tree(root: Path) -> None:
    """``root/{train,test}/{a,b}/*.png``: RGB images of every size in ``SIZES``."""
    write_png_tree(root, ("train", "test"), ("a", "b"), SIZES)


def test_augmented_training_on_mixed_size_images_writes_a_bundle(tmp_path: Path) -> None:
    write_mixed_size_tree(tmp_path / "data")
    config = TrainConfig(dataset="imagefolder", data_dir=tmp_path / "data", out_dir=tmp_path / "run", epochs=1,
                         augment=True, width=0.125, progress=False, cem_lambda=0, device="cpu")
    result = train(config)
    manifest, _ = load_bundle(result.bundle)
    assert manifest.training["augment"] is True
    assert manifest.dataset.name == "imagefolder" and manifest.dataset.image_size == 32
    assert manifest.dataset.class_names == ("a", "b")
    assert 0.0 <= result.accuracy <= 1.0


def test_facescrub_trains_at_the_papers_48_px_geometry(tmp_path: Path) -> None:
    """FaceScrub as in the paper: 48×48 inputs to VGG11 cut 4, so the edge sends 8×12×12 and an attack
    decodes 12 → 48 (two upsampling stages), from files in the ImageFolder layout."""
    write_mixed_size_tree(tmp_path / "data")
    config = TrainConfig(dataset="facescrub", data_dir=tmp_path / "data", out_dir=tmp_path / "run", epochs=1,
                         width=0.125, progress=False, cem_lambda=0, noise_std=0.0, device="cpu")
    result = train(config)
    manifest, _ = load_bundle(result.bundle)
    assert (manifest.dataset.name, manifest.dataset.image_size) == ("facescrub", 48)
    assert (manifest.model.arch, manifest.model.cut_layer, manifest.model.image_size) == ("vgg11_bn_sgm", 4, 48)
    assert tuple(manifest.feature_shape) == (8, 12, 12)
    network = InversionConfig.for_features(tuple(manifest.feature_shape), 3, 48, num_blocks=1, channels=8)
    assert InversionNetwork(network)(torch.rand(2, 8, 12, 12)).shape == (2, 3, 48, 48)
