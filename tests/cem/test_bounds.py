"""Every reported bound carries its kind, is checked against real numbers, and is never oversold."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from attacker.service.api.schemas import BoundKind, PrivacyBound
from cem.bounds import BOUND_KINDS, BOUND_LABELS, native_view, privacy_bound, stored_bound, training_bound_metrics
from cem.entropy import PixelMoments, mse_lower_bound
from cem.errors import ConfigError
from cem.manifest import MetricsRecord

ROOT = Path(__file__).resolve().parents[2]


def test_gaussian_entropy_equals_a_float64_closed_form_and_streams() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 5))
    samples = rng.normal(size=(400, 5)) @ mixing.T * 0.1
    step = 1 / 16
    covariance = np.cov(samples, rowvar=False) + np.eye(5) * step**2 / 12
    expected = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covariance)[1]
    moments = PixelMoments()
    for chunk in np.array_split(samples, 7):
        moments.update(torch.from_numpy(chunk))
    assert moments.gaussian_entropy(step) == pytest.approx(expected, rel=1e-10)
    assert moments.mean_image_mse() == pytest.approx(float(samples.var(axis=0).mean()), rel=1e-10)


@pytest.mark.parametrize("n", [3, 20, 50, 51, 90])
def test_fewer_samples_than_dimensions_give_the_same_entropy_through_the_gram_matrix(n: int) -> None:
    rng = np.random.default_rng(n)
    samples = rng.integers(0, 17, size=(n, 50)) / 16.0  # d = 50: n <= d uses the n x n Gram matrix, n > d the sums
    step = 1 / 16
    covariance = np.cov(samples, rowvar=False) + np.eye(50) * step**2 / 12
    expected = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covariance)[1]
    moments, variances = PixelMoments(), PixelMoments(covariance=False)
    for chunk in np.array_split(samples, 3):
        moments.update(torch.from_numpy(chunk))
        variances.update(torch.from_numpy(chunk))
    assert moments.gaussian_entropy(step) == pytest.approx(expected, rel=1e-9)
    assert np.allclose(moments.covariance().numpy(), np.cov(samples, rowvar=False), atol=1e-12)
    for mse in (moments.mean_image_mse(), variances.mean_image_mse()):
        assert mse == pytest.approx(float(samples.var(axis=0).mean()), rel=1e-9)
    with pytest.raises(ConfigError, match="covariance=True"):
        variances.gaussian_entropy(step)


def test_native_view_pools_to_the_native_side() -> None:
    images = torch.arange(16.0).view(1, 1, 4, 4)
    assert native_view(images, 2).tolist() == [[2.5, 4.5, 10.5, 12.5]]
    assert native_view(images, 4).shape == (1, 16)


def metrics(xi_relative: float = 0.05, xi_estimate: float | None = 1e-4) -> dict[str, float]:
    base = {"entropy_bound": -90.0, "mse_bound_xi": xi_relative, "information_bound": 90.0, "mean_image_mse": 0.046}
    if xi_estimate is None:
        return base
    stats = {"entropy_x_estimate": -75.0, "mean_image_mse": 0.046, "mean_image_mse_native": 0.04}
    extra = training_bound_metrics(90.0, 64, stats)
    return {**base, **extra, "mse_bound_xi_estimate": xi_estimate}


def test_estimate_is_theorem_1_with_the_estimated_entropy() -> None:
    extra = training_bound_metrics(90.0, 64, {"entropy_x_estimate": -75.0, "mean_image_mse": 0.05,
                                              "mean_image_mse_native": 0.04})
    assert extra["entropy_bound_estimate"] == pytest.approx(-165.0)
    assert extra["mse_bound_xi_estimate"] == pytest.approx(math.exp(2 * -165.0 / 64) / (2 * math.pi * math.e))
    assert extra["mse_bound_xi_estimate"] == pytest.approx(mse_lower_bound(-165.0, 64))


def test_bound_has_a_kind_and_the_headline_is_the_estimate() -> None:
    bound = privacy_bound(metrics(), attack_mse=0.01, attack_mse_native=0.008)
    assert bound is not None and bound["kind"] == "estimate" and bound["relative"]["kind"] == "relative"
    assert bound["xi"] == 1e-4 and bound["dimension"] == 64 and bound["exceeds_attack"] is False
    assert bound["relative"]["exceeds_mean_image"] is True and bound["relative"]["exceeds_attack"] is True
    assert len(bound["warnings"]) == 2 and all("relative ξ" in w for w in bound["warnings"])
    PrivacyBound.model_validate(bound)  # the audit API's schema accepts it as is


def test_old_bundles_get_a_relative_bound_and_no_noise_gets_none() -> None:
    bound = privacy_bound(metrics(xi_relative=0.01, xi_estimate=None), attack_mse=0.02)
    assert bound is not None and bound["kind"] == "relative" and "relative" not in bound and not bound["warnings"]
    assert privacy_bound({"accuracy": 0.9}) is None


def test_the_manifest_record_and_its_json_give_the_same_bound() -> None:
    record = MetricsRecord.from_dict(metrics())
    assert (record.xi_relative, record.xi_estimate) == (0.05, 1e-4)  # read from mse_bound_xi(_estimate)
    assert privacy_bound(record, attack_mse=0.01) == privacy_bound(metrics(), attack_mse=0.01)
    assert privacy_bound(MetricsRecord(entropy_bound=-90.0, xi_relative=math.inf)) is None  # not finite: none


def test_an_estimate_beaten_by_an_attack_says_so() -> None:
    bound = privacy_bound(metrics(xi_estimate=0.01), attack_mse_native=0.002)
    assert bound is not None and bound["exceeds_attack"] is True
    assert any("estimate ξ" in w and "not a floor" in w for w in bound["warnings"])


def test_the_api_enum_is_the_kernel_enum() -> None:
    assert typing.get_args(BoundKind) == BOUND_KINDS == tuple(BOUND_LABELS)


# Phrases that would present ξ as a guarantee. A "floor" label may say so; nothing else may.
OVERSELLING = re.compile(r"ξ bound|lower bound on any attacker|(?<!not a )guaranteed (per-pixel )?MSE floor|"
                         r"(?<!not )an? (MSE )?floor on", re.IGNORECASE)


def test_no_text_calls_a_relative_or_estimated_xi_a_lower_bound() -> None:
    for kind in ("estimate", "relative"):
        assert "not" in BOUND_LABELS[kind] and "lower bound" not in BOUND_LABELS[kind]
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("attacker", "demo", "cem", "training", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OVERSELLING.search(line) and 'BOUND_LABELS["floor"]' not in line and '"floor": "' not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_results_stored_before_kinds_read_as_relative() -> None:
    upgraded = stored_bound({"xi": 0.04, "entropy_bound": -80.0})
    assert upgraded is not None and upgraded["kind"] == "relative" and upgraded["xi"] == 0.04
    PrivacyBound.model_validate(upgraded)
    assert stored_bound({}) is None and stored_bound(None) is None
    current = privacy_bound(metrics())
    assert stored_bound(current) is current
