"""Fixtures of the attack tests: the attacker's features of the untrained digits encoder."""

from __future__ import annotations

import pytest
from bundle_fixtures import build_digits_model

from attacker.attacks import FeatureSet, compute_feature_set, load_images


@pytest.fixture(scope="session")
def digits_feature_sets() -> dict[str, FeatureSet]:
    """Clean features of the untrained test encoder for both digits splits."""
    encoder = build_digits_model().encoder
    return {split: compute_feature_set(encoder, load_images("digits", split)) for split in ("train", "test")}
