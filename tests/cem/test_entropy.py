"""The CEM bounds against direct float64 evaluations and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cem.entropy import (
    mixture_information_bound,
    mse_lower_bound,
    reference_log_hinge,
    relative_conditional_entropy,
)
from cem.errors import ConfigError


def direct_eq7(weights: np.ndarray, variances: np.ndarray, sigma: float) -> float:
    """Σ π(−log π + ½ log|Σ+σ²I|/|σ²I|) with explicit covariance matrices and slogdet."""
    total = 0.0
    dim = variances.shape[1]
    for pi, var in zip(weights, variances, strict=True):
        if pi == 0:
            continue
        _, logdet = np.linalg.slogdet(np.diag(var) + sigma**2 * np.eye(dim))
        total += pi * (-math.log(pi) + 0.5 * (logdet - dim * math.log(sigma**2)))
    return total


def test_information_bound_matches_determinant_form() -> None:
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(6))
    variances = rng.uniform(0, 0.05, size=(6, 20))
    value = mixture_information_bound(torch.from_numpy(weights), torch.from_numpy(variances), 0.1)
    assert float(value) == pytest.approx(direct_eq7(weights, variances, 0.1), rel=1e-12)


def test_empty_components_contribute_nothing() -> None:
    weights = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    variances = torch.rand(3, 4, dtype=torch.float64)
    value = mixture_information_bound(weights, variances, 0.2)
    assert math.isfinite(float(value))
    assert float(value) == pytest.approx(direct_eq7(weights.numpy(), variances.numpy(), 0.2), rel=1e-12)


def test_bound_is_log_k_for_point_masses() -> None:
    """Zero covariance: the only information left is which of the k equiprobable components."""
    value = mixture_information_bound(torch.full((4,), 0.25), torch.zeros(4, 8), 0.1)
    assert float(value) == pytest.approx(math.log(4), rel=1e-6)


def test_theorem1_is_tight_for_isotropic_gaussian_posterior() -> None:
    """x|z ~ N(m, s²I) has H = d/2·log(2πe s²) and minimal MSE per value exactly s²."""
    dim, s2 = 1024, 0.003
    entropy = 0.5 * dim * math.log(2 * math.pi * math.e * s2)
    assert mse_lower_bound(entropy, dim) == pytest.approx(s2, rel=1e-12)


def test_relative_entropy_uses_stated_convention() -> None:
    assert relative_conditional_entropy(12.5) == -12.5
    assert relative_conditional_entropy(12.5, entropy_x=100.0) == 87.5
    assert mse_lower_bound(0.0, 10) == pytest.approx(1 / (2 * math.pi * math.e))
    assert mse_lower_bound(-50.0, 1024) < mse_lower_bound(-10.0, 1024)


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ConfigError, match="noise_std > 0"):
        mixture_information_bound(torch.ones(1), torch.zeros(1, 2), 0.0)
    with pytest.raises(ConfigError, match="positive input dimension"):
        mse_lower_bound(0.0, 0)


def test_reference_hinge_is_zero_below_threshold() -> None:
    sigma, tau, gamma = 0.1, 0.125, 0.01
    threshold = tau * sigma**2
    values = reference_log_hinge(torch.tensor([0.0, threshold, 0.05]), sigma, tau, gamma)
    assert values[0] == 0 and values[1] == pytest.approx(0.0, abs=1e-6)
    assert float(values[2]) == pytest.approx(math.log(0.05 + gamma) - math.log(threshold + gamma), rel=1e-6)
