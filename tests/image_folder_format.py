"""ImageFolder trees of real PNG files for tests: ``root/<split>/<class>/<i>.png``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_png_tree(root: Path, splits: Sequence[str], classes: Sequence[str], sizes: Sequence[tuple[int, int]],
                   seed: int = 0) -> None:
    """One random RGB image per (height, width) in ``sizes``, for every split and class."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (height, width) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
