"""Tiny TinyImageNet folders in the released layout (CS231n's ``tiny-imagenet-200``), for tests.

``wnids.txt``; ``train/<wnid>/images/<wnid>_<i>.JPEG`` with ``train/<wnid>/<wnid>_boxes.txt``;
``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt`` (``file\\twnid\\tx0\\ty0\\tx1\\ty1``);
``test/images/test_<i>.JPEG`` (unlabelled). Every image is a 64×64 RGB JPEG of noise whose red channel
is 40·k for class k, so a test can tell from its mean red which class a loaded image came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64
CLASS_RED_STEP = 40


def _jpeg(path: Path, klass: int, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    pixels[..., 0] = CLASS_RED_STEP * klass
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def class_of(mean_red: float) -> int:
    """The class coded in a loaded image's mean red value in [0, 1] (JPEG moves it by a few levels at most)."""
    return round(mean_red * 255 / CLASS_RED_STEP)


def write_tinyimagenet(root: Path, wnids: tuple[str, ...], train_per_class: int, val_per_class: int,
                       seed: int = 0) -> Path:
    """The released layout under ``root``; returns ``root``. The val images are listed class-interleaved,
    like the release, so their files' order says nothing about their class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for k, wnid in enumerate(sorted(wnids)):
        boxes = []
        for i in range(train_per_class):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", k, rng)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t{SIDE - 1}\t{SIDE - 1}\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    annotations = []
    for i in range(val_per_class * len(wnids)):
        wnid = wnids[i % len(wnids)]
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", sorted(wnids).index(wnid), rng)
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t{SIDE - 1}\t{SIDE - 1}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(annotations))
    for i in range(2):
        _jpeg(root / "test" / "images" / f"test_{i}.JPEG", 0, rng)
    return root
