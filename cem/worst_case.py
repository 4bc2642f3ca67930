"""The worst case of a set of attacks: per column, the attack that reconstructed best.

A defense is only as strong as the strongest attack against it, so every audit, report and
experiment table leads with this, not with whichever attack happened to be run first. Kept
free of torch: the audit client and the demo's report (torch-free images) use it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def worst_case(mse: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """``mse[attack][column]`` -> ``{column: {"attack", "mse", "attacks"}}``: per column, the attack with the
    lowest MSE among those that scored it (``attacks``: how many did). Missing or non-finite values are
    skipped; a column no attack scored is left out. Ties go to the attack listed first."""
    columns: dict[str, dict[str, Any]] = {}
    for attack, scores in mse.items():
        for column, value in scores.items():
            if value is None or not math.isfinite(value):
                continue
            entry = columns.setdefault(column, {"attack": attack, "mse": value, "attacks": 0})
            entry["attacks"] += 1
            if value < entry["mse"]:
                entry.update(attack=attack, mse=value)
    return columns
