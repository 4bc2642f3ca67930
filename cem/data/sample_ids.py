"""Sample ids name a test image, so captured traffic can be scored against ground truth.

Only demo and audit runs send them (``InferRequest.sample_ids``); production
traffic leaves them empty. Format: ``<dataset>/<split>/<index>``, where ``index`` is a
position in ``load_dataset(dataset, split)``'s fixed order (for ImageFolder trees a seeded
permutation, not the class-sorted file list; see ``cem.data.vision``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cem.data.registry import SPLITS
from cem.errors import ConfigError


@dataclass(frozen=True)
class SampleId:
    dataset: str
    split: str
    index: int

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split}/{self.index}"


def format_sample_id(dataset: str, split: str, index: int) -> str:
    return str(SampleId(dataset, split, int(index)))


def parse_sample_id(text: str) -> SampleId:
    parts = text.split("/")
    if len(parts) != 3 or parts[1] not in SPLITS or not parts[2].isdigit():
        raise ConfigError(f"expected a sample id '<dataset>/<split>/<index>', got {text!r}")
    return SampleId(parts[0], parts[1], int(parts[2]))
