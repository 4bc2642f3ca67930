"""The unit of a bundle's CEM λ, so a λ is never read in the wrong units.

``"paper"``: λ means what the paper's λ means in the authors' code (the reference's
per-sample pull and lr coupling; ``training.cem_plugin``). Bundles written before
that convention have no ``lambda_units`` key and a λ that multiplied the raw Eq. 7
sum of nats (``LEGACY_LAMBDA_UNITS``): their λ = 0.0075 is not the paper's 0.0075.
"""

from __future__ import annotations

from typing import Any

LAMBDA_UNITS = "paper"
LEGACY_LAMBDA_UNITS = "raw-eq7-nats"


def lambda_units_of(cem_record: dict[str, Any] | None) -> str | None:
    """The unit of a manifest's ``cem.lam``: ``LAMBDA_UNITS``, the legacy unit, or None without CEM."""
    if not cem_record:
        return None
    return str(cem_record.get("lambda_units", LEGACY_LAMBDA_UNITS))
