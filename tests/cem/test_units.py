"""A bundle's λ is read in the units it was written in."""

from __future__ import annotations

from cem.units import LAMBDA_UNITS, LEGACY_LAMBDA_UNITS, lambda_units_of
from training.cem_plugin import CEMConfig


def test_new_bundles_record_paper_units_and_old_ones_read_as_legacy() -> None:
    assert CEMConfig(lam=16.0).to_dict()["lambda_units"] == LAMBDA_UNITS == "paper"
    assert lambda_units_of(CEMConfig(lam=16.0).to_dict()) == "paper"
    assert lambda_units_of({"lam": 0.0075, "k": 3}) == LEGACY_LAMBDA_UNITS  # written before the convention
    assert lambda_units_of(None) is None
