"""Data sets by name: ``load_dataset("digits", split="test")`` -> (dataset, info)."""

from cem.data import digits, mnist5k, vision  # noqa: F401  (registers the loaders)
from cem.data.registry import (
    DataRequest,
    DatasetInfo,
    available_datasets,
    load_dataset,
    register_dataset,
)

__all__ = ["DataRequest", "DatasetInfo", "available_datasets", "load_dataset", "register_dataset"]
