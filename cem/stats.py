"""Means with confidence intervals over seeds: the one way every table reports a number.

With 3 seeds a normal interval is far too narrow, so the half-width uses Student's
t quantile with n − 1 degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import t as student_t

from cem.errors import ConfigError

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values and the half-width of its two-sided ``CONFIDENCE`` interval (nan for n = 1)."""

    mean: float
    half_width: float
    n: int

    def format(self, spec: str = ".4f", scale: float = 1.0) -> str:
        """``"0.1234 ± 0.0012"`` (values multiplied by ``scale``, e.g. 100 for percent)."""
        if math.isnan(self.half_width):
            return f"{self.mean * scale:{spec}}"
        return f"{self.mean * scale:{spec}} ± {self.half_width * scale:{spec}}"

    def to_dict(self) -> dict[str, float | int | None]:
        half = None if math.isnan(self.half_width) else self.half_width
        return {"mean": self.mean, "ci95": half, "n": self.n}


def mean_interval(values: Iterable[float]) -> Estimate:
    """Mean and t-interval half-width of finite values (at least one)."""
    data = [float(v) for v in values]
    if not data or not all(math.isfinite(v) for v in data):
        raise ConfigError(f"expected at least one finite value, got {data}")
    n = len(data)
    mean = sum(data) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    variance = sum((v - mean) ** 2 for v in data) / (n - 1)
    half = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * math.sqrt(variance / n)
    return Estimate(mean, half, n)
