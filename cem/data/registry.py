"""Dataset registry: a name maps to a loader and the facts a model bundle records.

Every loader returns images as float tensors in [0, 1] of shape (C, S, S) and an
integer label; normalisation belongs to the data set (``DatasetInfo.mean/std``) and
is applied inside the encoder, never by callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Dataset

from cem.errors import ConfigError, UnknownNameError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on this data set must know about its inputs.

    ``native_size`` and ``quantisation_step`` describe how the pixels were recorded
    (digits: 8x8 with 17 grey levels, step 1/16; 8-bit images: step 1/255); the
    entropy estimate behind the bound's ``estimate`` kind works at that resolution.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())
    native_size: int | None = None
    quantisation_step: float = 1.0 / 255.0

    @property
    def native_resolution(self) -> int:
        """The side the images were recorded at (digits: 8, upsampled to 32); the entropy estimate's grid."""
        return self.native_size or self.image_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """``to_dict``'s object back (a bundle's ``manifest.dataset``). Bundles from before the bound's
        ``estimate`` kind lack ``native_size`` (None) and ``quantisation_step`` (the class default)."""
        try:
            native_size, step = data.get("native_size"), data.get("quantisation_step")
            return cls(
                name=str(data["name"]),
                num_classes=int(data["num_classes"]),
                in_channels=int(data["in_channels"]),
                image_size=int(data["image_size"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                class_names=tuple(str(n) for n in data.get("class_names") or ()),
                native_size=int(native_size) if native_size is not None else None,
                **({"quantisation_step": float(step)} if step is not None else {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"expected a complete dataset record, got {data!r} ({exc})") from exc

    def to_dict(self) -> dict:
        return {
            "native_size": self.native_resolution,
            "quantisation_step": self.quantisation_step,
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }


@dataclass(frozen=True)
class DataRequest:
    """How to find a data set: ``data_dir`` for files on disk, ``download`` for users online."""

    split: str = "train"
    data_dir: Path | None = None
    download: bool = False
    augment: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"expected split in {SPLITS}, got {self.split!r}")


class DatasetLoader(Protocol):
    def __call__(self, request: DataRequest) -> tuple[Dataset, DatasetInfo]: ...


class ValidationCarve(Protocol):
    """A data set's own validation part: ``fraction`` -> (fit, validation) indices into its training split."""

    def __call__(self, fraction: float) -> tuple[np.ndarray, np.ndarray]: ...


_LOADERS: dict[str, DatasetLoader] = {}
_VALIDATION_CARVES: dict[str, ValidationCarve] = {}


def register_dataset(
    name: str, validation: ValidationCarve | None = None
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator that makes a loader available to every CLI under ``name``.

    ``validation``: the data set's own carve of its training split (mnist5k's is stratified);
    without one, ``cem.data.validation`` carves a fixed permutation."""

    def decorate(loader: DatasetLoader) -> DatasetLoader:
        _LOADERS[name] = loader
        if validation is not None:
            _VALIDATION_CARVES[name] = validation
        return loader

    return decorate


def validation_carve(name: str) -> ValidationCarve | None:
    """The data set's own validation carve, or None when the generic permutation applies."""
    return _VALIDATION_CARVES.get(name)


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    download: bool = False,
    augment: bool = False,
) -> tuple[Dataset, DatasetInfo]:
    """Load one split of a registered data set: (dataset of (x in [0,1], label), info)."""
    if name not in _LOADERS:
        raise UnknownNameError(f"expected a dataset in {available_datasets()}, got {name!r}")
    request = DataRequest(
        split=split,
        data_dir=Path(data_dir) if data_dir is not None else None,
        download=download,
        augment=augment,
    )
    return _LOADERS[name](request)
