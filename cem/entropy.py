"""The CEM information bounds as pure functions (paper Eq. 3, 7, 16 and Theorem 1).

Everything here is stateless maths on tensors, so the training plug-in, the
attacker's audit and the tests all evaluate the same formulas.

Notation (paper §3.3, supplement S.2): the clean features ẑ of a data set are
modelled as a mixture Σ_j π_j N(μ_j, Σ_j); the transmitted features are
z = ẑ + ε with ε ~ N(0, Σ_p), Σ_p = σ²I. With diagonal Σ_j = diag(v_j):

    I(z; ẑ) ≤ Σ_j π_j (−log π_j + ½ Σ_d log((v_jd + σ²)/σ²))      (Eq. 16, = L_C of Eq. 7)
    H(x|z)  ≥ H(x) − that bound                                    (Eq. 3)
    ξ       ≥ exp(2 H(x|z) / d) / (2πe)                            (Theorem 1, d = image dimension)

H(x) of natural images is intractable; the paper reports a "relative" H(x|z)
with H(x) replaced by a constant. Our convention is H(x) := 0 nats, the
differential entropy of the uniform distribution on [0, 1]^d, which is the
largest entropy any image distribution on [0, 1]^d can have. So the relative
bound is −L_C, and the ξ computed from it is relative too: it orders models
trained on the same data set, it is not a guaranteed MSE floor.
"""

from __future__ import annotations

import math

import torch

from cem.errors import ConfigError

TWO_PI_E = 2.0 * math.pi * math.e


def _check_noise(noise_std: float) -> float:
    if not noise_std > 0:
        raise ConfigError(f"expected noise_std > 0 for the CEM bound (Σ_p = σ²I must be invertible), got {noise_std}")
    return float(noise_std) ** 2


def component_information(variances: torch.Tensor, noise_std: float) -> torch.Tensor:
    """½ Σ_d log((v_jd + σ²)/σ²) per component.

    variances: (K, D) diagonal covariances Σ_j, >= 0 -> (K,) nats.
    """
    noise_var = _check_noise(noise_std)
    return 0.5 * torch.log1p(variances / noise_var).sum(dim=-1)


def weight_entropy_terms(weights: torch.Tensor) -> torch.Tensor:
    """−π_j log π_j per component, with 0·log 0 := 0. weights: (K,) -> (K,)."""
    safe = torch.where(weights > 0, weights, torch.ones_like(weights))
    return -weights * torch.log(safe)


def mixture_information_bound(weights: torch.Tensor, variances: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Eq. 7 / Eq. 16: Σ_j π_j(−log π_j + ½ log|Σ_j + σ²I|/|σ²I|) with diagonal Σ_j.

    weights: (K,) global mixture weights summing to 1; variances: (K, D) -> scalar, nats.
    Differentiable in ``variances`` (the weights are treated as given).
    """
    return (weight_entropy_terms(weights) + weights * component_information(variances, noise_std)).sum()


def relative_conditional_entropy(information_bound: float, entropy_x: float = 0.0) -> float:
    """Eq. 3: H(x|z) ≥ H(x) − I-bound, with the H(x) convention described in the module docstring."""
    return float(entropy_x) - float(information_bound)


def mse_lower_bound(conditional_entropy: float, dimension: int) -> float:
    """Theorem 1: ξ ≥ exp(2 H(x|z) / d) / (2πe), d = number of input values (C·H·W)."""
    if dimension < 1:
        raise ConfigError(f"expected a positive input dimension, got {dimension}")
    return math.exp(2.0 * conditional_entropy / dimension) / TWO_PI_E


def reference_log_hinge(variance: torch.Tensor, noise_std: float, tau: float, gamma: float) -> torch.Tensor:
    """The reference code's per-component term ReLU(log(s² + γ) − log(τσ² + γ)) (reference_notes §3.3.2).

    variance: any shape, isotropic scalar variances s² -> same shape. Not a bound;
    kept so reference-style training can be reproduced.
    """
    threshold = math.log(tau * float(noise_std) ** 2 + gamma)
    return torch.relu(torch.log(variance + gamma) - threshold)
