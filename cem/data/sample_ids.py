"""Sample ids name a test image, so captured traffic can be scored against ground truth.

Only demo and audit runs send them (``InferRequest.sample_ids``); production
traffic leaves them empty. Format: ``<dataset>/<split>/<index>``, where ``index`` is a
position in ``load_dataset(dataset, split)``'s fixed order (for ImageFolder trees a seeded
permutation, not the class-sorted file list; see ``cem.data.vision``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cem.data.registry import SPLITS
from cem.errors import ConfigError, echo

# ASCII only and one canonical spelling per image: str.isdigit() accepts "²" and int() then
# raises, so a looser check let one request poison every capture-based audit of a model.
SAMPLE_ID_PATTERN = re.compile(r"([A-Za-z0-9_.-]{1,64})/(" + "|".join(SPLITS) + r")/(0|[1-9][0-9]{0,9})")


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
    """``"digits/test/17"`` -> SampleId; anything else (including non-ASCII digits) -> ConfigError."""
    match = SAMPLE_ID_PATTERN.fullmatch(text)
    if match is None:
        raise ConfigError(f"expected a sample id '<dataset>/<{'|'.join(SPLITS)}>/<index>' in ASCII, got {echo(text)}")
    return SampleId(match.group(1), match.group(2), int(match.group(3)))
