"""A PNG grid of originals above reconstructions, one block of columns per scored set.

Each ``GridGroup`` becomes a block of columns: the top row shows the originals,
the bottom row the attack's reconstructions. Originals whose ground truth is
unknown (captured traffic without a sample id) are drawn as flat grey tiles.
Blocks sit side by side, separated by a wider white gap.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cem.errors import ConfigError

TILE_GAP = 2
GROUP_GAP = 12
UNKNOWN_GREY = 0.5
MIN_TILE = 64


@dataclass(frozen=True)
class GridGroup:
    """One group of grid columns.

    ``reconstructions`` (k, C, S, S) in [0, 1]; ``originals`` the same shape; ``known`` (k,) bool or None (all known).
    """

    originals: torch.Tensor
    reconstructions: torch.Tensor
    known: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.originals.shape != self.reconstructions.shape or self.originals.dim() != 4:
            raise ConfigError(
                f"expected originals and reconstructions of one (k, C, S, S) shape, got "
                f"{tuple(self.originals.shape)} and {tuple(self.reconstructions.shape)}"
            )


def _to_display(images: torch.Tensor) -> torch.Tensor:
    """(k, C, S, S) -> (k, S, S, 3 or 1) float in [0, 1]; other channel counts are averaged to grey."""
    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] not in (1, 3):
        images = images.mean(dim=1, keepdim=True)
    return images.permute(0, 2, 3, 1)


def render_grid_png(groups: Sequence[GridGroup]) -> bytes:
    """Encode the groups as one PNG; small images are enlarged (nearest) to at least ``MIN_TILE`` pixels."""
    groups = [g for g in groups if g.reconstructions.shape[0] > 0]
    if not groups:
        raise ConfigError("expected at least one image to draw, got none")
    side = int(groups[0].reconstructions.shape[-1])
    channels = _to_display(groups[0].reconstructions[:1]).shape[-1]
    scale = max(1, -(-MIN_TILE // side))
    tile = side * scale
    widths = [g.reconstructions.shape[0] * (tile + TILE_GAP) - TILE_GAP for g in groups]
    canvas = np.ones((2 * tile + TILE_GAP, sum(widths) + GROUP_GAP * (len(groups) - 1), channels), dtype=np.float32)
    x0 = 0
    for group, width in zip(groups, widths, strict=True):
        known = group.known if group.known is not None else torch.ones(group.originals.shape[0], dtype=torch.bool)
        originals = _to_display(group.originals)
        originals[~known.cpu()] = UNKNOWN_GREY
        for row, images in enumerate((originals, _to_display(group.reconstructions))):
            if images.shape[1] != side or images.shape[-1] != channels:
                raise ConfigError(f"expected all grid images of side {side} with {channels} display channels")
            for k, image in enumerate(images):
                big = image.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1).numpy()
                y, x = row * (tile + TILE_GAP), x0 + k * (tile + TILE_GAP)
                canvas[y : y + tile, x : x + tile] = big
        x0 += width + GROUP_GAP
    pixels = (canvas * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
