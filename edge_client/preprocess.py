"""Turn what a caller has (files, PIL images, arrays, tensors) into the encoder's input.

Output: (B, C, S, S) float32 in [0, 1] with the bundle's channel count C and
size S. No normalisation here: the encoder's first layer applies the bundle's
mean/std, so nobody guesses those constants.

Conventions: numpy arrays are images as libraries hand them out, (H, W) or
(H, W, C); tensors follow torch, (C, H, W) or (B, C, H, W). uint8 values are
divided by 255; float values must already lie in [0, 1]. Grey becomes RGB by
repetition and RGB becomes grey by ITU-R 601 luma (PIL's "L"); other sizes are
resized bilinearly (with antialiasing) to S x S.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cem.errors import CEMError

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


class ImageInputError(CEMError, ValueError):
    """An input cannot be read or converted into the encoder's image format."""


def prepare_images(images: ImageInput | Sequence[ImageInput], *, channels: int, size: int) -> torch.Tensor:
    """One image, a sequence of images, or a (B, C, H, W) tensor -> (B, channels, size, size) in [0, 1]."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        batch = _to_unit_float(images, "tensor batch")
        if batch.shape[1:] == (channels, size, size):
            return batch.contiguous()
        items = [_fit(x, channels, size) for x in batch]
    elif isinstance(images, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        items = [_fit(_to_chw(images, channels), channels, size)]
    else:
        items = [_fit(_to_chw(image, channels), channels, size) for image in images]
    if not items:
        return torch.empty((0, channels, size, size))
    return torch.stack(items)


def _to_chw(image: ImageInput, channels: int) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        return _pil_to_chw(_open(Path(image)), channels)
    if isinstance(image, Image.Image):
        return _pil_to_chw(image, channels)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ImageInputError(f"expected an array of shape (H, W) or (H, W, C), got {image.shape}")
        return _tensor_to_chw(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), "array")
    if isinstance(image, torch.Tensor):
        return _tensor_to_chw(image, "tensor")
    raise ImageInputError(f"expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except FileNotFoundError:
        raise ImageInputError(f"expected an image file at {path}, but it does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageInputError(f"expected a readable image at {path}, got an error: {exc}") from None


def _pil_to_chw(image: Image.Image, channels: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(mode), dtype=np.uint8)
    return _tensor_to_chw(
        torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1), "image"
    )


def _tensor_to_chw(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[1] == 0 or t.shape[2] == 0:
        raise ImageInputError(f"expected a {what} of shape (C, H, W) or (H, W), got {tuple(t.shape)}")
    return _to_unit_float(t, what)


def _to_unit_float(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        raise ImageInputError(f"expected a {what} of uint8 or float values, got {t.dtype}")
    t = t.detach().float().cpu()
    if t.numel():
        low, high = (float(v) for v in torch.aminmax(t))  # one pass; a NaN makes both NaN, failing the test
        if not (low >= 0.0 and high <= 1.0):
            raise ImageInputError(f"expected float {what} values in [0, 1], got range [{low:.3g}, {high:.3g}]")
    return t


def _fit(chw: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """(c, h, w) in [0, 1] -> (channels, size, size) in [0, 1]."""
    c = chw.shape[0]
    if c == 4 and channels != 4:  # RGBA: the alpha channel carries no class information
        chw, c = chw[:3], 3
    if c != channels:
        if c == 1:
            chw = chw.expand(channels, -1, -1)
        elif c == 3 and channels == 1:
            chw = (chw * _LUMA).sum(dim=0, keepdim=True)
        else:
            raise ImageInputError(f"expected images with 1, 3 or {channels} channels, got {c}")
    if chw.shape[1:] != (size, size):
        batch = F.interpolate(chw.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        chw = batch[0]
    return chw.clamp(0.0, 1.0).contiguous()
