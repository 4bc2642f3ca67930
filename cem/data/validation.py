"""A validation split carved from a training split, for choosing defaults and checkpoints.

Defaults (λ, σ) are chosen on images the reported test split never contains. The
carve is a fixed permutation (``VALIDATION_SPLIT_SEED``, part of the definition,
not of the run) so every seed of a sweep is validated on the same images and
paired comparisons between settings are not blurred by a moving validation set.
"""

from __future__ import annotations

import numpy as np

from cem.data.registry import validation_carve
from cem.errors import ConfigError

VALIDATION_SPLIT_SEED = 20261201


def validation_indices(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices), both sorted, of a training split of ``n`` items.

    ``fraction`` in (0, 1): the share held out for validation (at least one item each side).
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"expected a validation fraction in (0, 1), got {fraction}")
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise ConfigError(f"expected a validation fraction leaving both parts non-empty for {n} items, got {fraction}")
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def carve_validation(dataset: str, n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices of ``dataset``'s training split of ``n`` items: the data set's own
    carve where it defines one (mnist5k: stratified per class), else ``validation_indices``."""
    carve = validation_carve(dataset)
    if carve is None:
        return validation_indices(n, fraction)
    if not 0 < fraction < 1:
        raise ConfigError(f"expected a validation fraction in (0, 1), got {fraction}")
    return carve(fraction)


def describe_carve(dataset: str) -> dict[str, object]:
    """How ``carve_validation`` splits ``dataset`` (a manifest records it beside the fraction)."""
    if validation_carve(dataset) is None:
        return {"carve": "permutation", "split_seed": VALIDATION_SPLIT_SEED}
    return {"carve": f"{dataset}'s own (cem.data.{dataset})"}
