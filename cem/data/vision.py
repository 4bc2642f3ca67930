"""Real image data sets on disk: CIFAR-10/100 through torchvision, and ImageFolder trees.

The loading code is the real one (torchvision's readers, ``--download`` for users
who are online); when files are absent the error names the folder that was
expected, because that is the first thing a user has to fix.

Every image is resized to (S, S) before any augmentation, so ImageFolder trees of
mixed-size files batch whether or not the training profile augments.

ImageFolder lists files sorted by class. Both splits are put in a fixed
permutation, seeded by ``IMAGE_FOLDER_ORDER_SEED`` (part of the data set's
definition, not of the run, like ``DIGITS_SPLIT_SEED``), so "the data set's order"
that the attacker's ``infer`` protocol cuts at 90 % mixes the classes, and every
consumer (trainer, edge, attacker, sample ids) agrees on which index is which
file. The train loader reshuffles anyway; the train split is permuted too so
that one rule holds for both splits (a prefix such as ``cem-edge --limit`` is a
class mix there as well).

TinyImageNet also loads as released (``tiny-imagenet-200``, reference_notes §2):
``train/<wnid>/images/*.JPEG`` is an ImageFolder tree as it is (the ``*_boxes.txt``
files are skipped), but ``val/`` keeps its images in one ``images/`` folder with
their classes in ``val_annotations.txt``, and ``test/`` is unlabelled. Read as an
ImageFolder, either would be a single class named ``images``: every test label
wrong, without an error. So when the annotations are there, the test split is
the annotated ``val`` set (the paper's test set), with the train split's class
indices.

torchvision is imported where a loader runs, never at import time: every process
that reads a manifest imports this registry, and most of them (the cloud, the edge,
the audit workers on digits) never open an image file, while importing torchvision
costs seconds of start-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from cem.data.registry import DataRequest, DatasetInfo, register_dataset
from cem.errors import DatasetError, DatasetNotFoundError

if TYPE_CHECKING:
    from torchvision import datasets, transforms

CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    num_classes=10,
    in_channels=3,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.247, 0.243, 0.261),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100_INFO = DatasetInfo(
    name="cifar100",
    num_classes=100,
    in_channels=3,
    image_size=32,
    mean=(0.50708, 0.48655, 0.44092),
    std=(0.26733, 0.25644, 0.27615),
)
# FaceScrub and TinyImageNet constants are the reference's (reference_notes §1.3),
# kept for comparability although they are per-image rather than per-channel statistics.
FACESCRUB_STATS = ((0.5708, 0.5905, 0.4272), (0.2058, 0.2275, 0.2098), 48)
TINYIMAGENET_STATS = ((0.5141, 0.5775, 0.3985), (0.2927, 0.2570, 0.1434), 64)
IMAGE_FOLDER_ORDER_SEED = 20250612
TINYIMAGENET_ANNOTATIONS = "val_annotations.txt"


def _require_dir(request: DataRequest, dataset: str) -> Path:
    if request.data_dir is None:
        raise DatasetNotFoundError(f"dataset {dataset!r} needs --data-dir (the folder that holds its files)")
    return request.data_dir


def _image_transform(size: int, augment: bool, crop: bool) -> transforms.Compose:
    """Resize to (size, size) first (a no-op for CIFAR), then the training augmentations."""
    from torchvision import transforms

    steps: list = [transforms.Resize((size, size))]
    if augment:
        if crop:
            steps.append(transforms.RandomCrop(size, padding=4))
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def _permute_image_folder(dataset: datasets.ImageFolder) -> None:
    """Put ``samples``, ``imgs`` and ``targets`` in the fixed ``IMAGE_FOLDER_ORDER_SEED`` order, in place."""
    order = np.random.default_rng(IMAGE_FOLDER_ORDER_SEED).permutation(len(dataset.samples))
    dataset.samples = [dataset.samples[i] for i in order]
    dataset.imgs = dataset.samples
    dataset.targets = [target for _, target in dataset.samples]


def _cifar(request: DataRequest, reader: str, info: DatasetInfo, folder: str) -> tuple[Dataset, DatasetInfo]:
    """``reader``: the torchvision data set class by name (CIFAR10, CIFAR100)."""
    from torchvision import datasets

    root = _require_dir(request, info.name)
    try:
        dataset = getattr(datasets, reader)(
            root=str(root),
            train=request.split == "train",
            download=request.download,
            transform=_image_transform(info.image_size, request.augment, crop=True),
        )
    except RuntimeError as exc:
        raise DatasetNotFoundError(
            f"expected {info.name} files in {root / folder} (the python-pickle batches); "
            f"pass --download to fetch them when online, got: {exc}"
        ) from exc
    if not info.class_names and hasattr(dataset, "classes"):
        info = DatasetInfo(**{**info.__dict__, "class_names": tuple(dataset.classes)})
    return dataset, info


@register_dataset("cifar10")
def load_cifar10(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    return _cifar(request, "CIFAR10", CIFAR10_INFO, "cifar-10-batches-py")


@register_dataset("cifar100")
def load_cifar100(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    return _cifar(request, "CIFAR100", CIFAR100_INFO, "cifar-100-python")


def load_image_folder(
    request: DataRequest,
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int,
    test_folders: tuple[str, ...] = ("test", "val", "validate"),
) -> tuple[Dataset, DatasetInfo]:
    """``<data_dir>/train/<class>/*`` and ``<data_dir>/{test,val,validate}/<class>/*``, in the fixed
    ``IMAGE_FOLDER_ORDER_SEED`` permutation (see the module docstring), not sorted by class."""
    from torchvision import datasets

    root = _require_dir(request, name)
    candidates = ("train",) if request.split == "train" else test_folders
    folder = next((root / c for c in candidates if (root / c).is_dir()), None)
    if folder is None:
        expected = " or ".join(str(root / c) for c in candidates)
        raise DatasetNotFoundError(f"expected an ImageFolder tree at {expected} (one sub-folder per class)")
    dataset = datasets.ImageFolder(
        str(folder), transform=_image_transform(image_size, request.augment, crop=False)
    )
    return _ordered_with_info(dataset, name, mean, std, image_size)


def _ordered_with_info(
    dataset: datasets.ImageFolder, name: str, mean: tuple[float, ...], std: tuple[float, ...], image_size: int
) -> tuple[Dataset, DatasetInfo]:
    """``dataset`` in the fixed ``IMAGE_FOLDER_ORDER_SEED`` order, with its ``DatasetInfo``."""
    _permute_image_folder(dataset)
    info = DatasetInfo(
        name=name,
        num_classes=len(dataset.classes),
        in_channels=3,
        image_size=image_size,
        mean=mean,
        std=std,
        class_names=tuple(dataset.classes),
    )
    return dataset, info


@register_dataset("imagefolder")
def load_generic_image_folder(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    return load_image_folder(request, "imagefolder", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32)


@register_dataset("facescrub")
def load_facescrub(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    mean, std, size = FACESCRUB_STATS
    return load_image_folder(request, "facescrub", mean, std, size)


@functools.cache
def tinyimagenet_val_class() -> Any:
    """``TinyImageNetVal`` (below), built on first use: it subclasses torchvision's ImageFolder."""
    from torchvision import datasets

    class TinyImageNetVal(datasets.ImageFolder):
        """TinyImageNet's released ``val`` folder: ``images/<file>``, each file's class in ``val_annotations.txt``
        (tab-separated file, wnid, box), indexed as ``classes`` (the train split's). The reference's prepare
        script moves each image to ``images/<wnid>/<file>``; both places are looked up."""

        def __init__(self, root: Path, classes: list[str], transform: Callable) -> None:
            self.wnids = classes  # read by find_classes, which ImageFolder.__init__ calls
            super().__init__(str(root), transform=transform)

        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            return list(self.wnids), {wnid: index for index, wnid in enumerate(self.wnids)}

        def make_dataset(  # torchvision's hook for listing samples another way; its filters do not apply here
            self, directory: str | Path, class_to_idx: dict[str, int], **_filters: object
        ) -> list[tuple[str, int]]:
            folder = Path(directory)
            samples: list[tuple[str, int]] = []
            for line in (folder / TINYIMAGENET_ANNOTATIONS).read_text().splitlines():
                if not line.strip():
                    continue
                file, wnid = line.split("\t")[:2]
                if wnid not in class_to_idx:
                    raise DatasetError(
                        f"expected the class {wnid!r} of val image {file} to be a folder of train/, got no such folder"
                    )
                places = (folder / "images" / wnid / file, folder / "images" / file)
                path = next((p for p in places if p.is_file()), None)
                if path is None:
                    raise DatasetNotFoundError(f"expected val image {file} in {folder / 'images'}, but it is not there")
                samples.append((str(path), class_to_idx[wnid]))
            return samples

    return TinyImageNetVal


@register_dataset("tinyimagenet")
def load_tinyimagenet(request: DataRequest) -> tuple[Dataset, DatasetInfo]:
    """The released layout (annotated ``val`` as the test split, see the module docstring), else ImageFolder trees."""
    mean, std, size = TINYIMAGENET_STATS
    root = _require_dir(request, "tinyimagenet")
    val = root / "val"
    if request.split == "train" or not (val / TINYIMAGENET_ANNOTATIONS).is_file():
        return load_image_folder(request, "tinyimagenet", mean, std, size)
    if not (root / "train").is_dir():
        raise DatasetNotFoundError(f"expected {root / 'train'} (its class folders index the val annotations)")
    from torchvision import datasets

    classes, _ = datasets.folder.find_classes(str(root / "train"))  # the train split's ImageFolder classes
    dataset = tinyimagenet_val_class()(val, classes, _image_transform(size, request.augment, crop=False))
    return _ordered_with_info(dataset, "tinyimagenet", mean, std, size)
