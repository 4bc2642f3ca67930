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



class PixelMoments:
    """Streaming first and second moments of flattened images, in float64.

    Feeds the two data statistics a bound is checked against without holding a data
    set in memory (CIFAR's 50,000 x 3,072 covariance is accumulated batch by batch).
    While there are no more samples than dimensions the samples themselves are kept
    (never more values than the d x d sum they stand in for) and the entropy comes from
    their n x n Gram matrix, exactly (Sylvester's determinant identity): 64x64 RGB
    images (d = 12,288) seen a few hundred at a time cost a 12,288² log-determinant
    (a minute on one core) otherwise. Past d samples the kept rows are folded into
    the d x d sum batch by batch, in place. ``covariance=False`` keeps the per-value
    variances only, all ``mean_image_mse`` needs.
    """

    def __init__(self, covariance: bool = True) -> None:
        self.count = 0
        self._track_covariance = covariance
        self._sum: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None
        self._rows: list[torch.Tensor] | None = [] if covariance else None  # the samples, while count <= d
        self._outer: torch.Tensor | None = None  # sum of x xᵀ, once count > d

    def update(self, samples: torch.Tensor) -> None:
        """samples: (B, d) flattened images."""
        data = samples.detach().double().cpu()
        if self._sum is None or self._squares is None:
            self._sum = torch.zeros(data.shape[1], dtype=torch.float64)
            self._squares = torch.zeros(data.shape[1], dtype=torch.float64)
        self._sum += data.sum(dim=0)
        self._squares += (data * data).sum(dim=0)
        self.count += data.shape[0]
        if self._rows is not None:
            self._rows.append(data)
            if self.count > data.shape[1]:  # more samples than dimensions: the d x d sum is now the smaller
                self._outer = torch.zeros(data.shape[1], data.shape[1], dtype=torch.float64)
                rows, self._rows = self._rows, None
                while rows:  # batch by batch: no concatenated copy beside the sum
                    kept = rows.pop()
                    self._outer.addmm_(kept.T, kept)
        elif self._outer is not None:
            self._outer.addmm_(data.T, data)

    def _check_count(self) -> None:
        if self._sum is None or self.count < 2:
            raise ConfigError(f"expected at least 2 samples, got {self.count}")

    def _centred_rows(self) -> torch.Tensor | None:
        """(n, d) samples minus their mean while they are kept, else None."""
        if self._rows is None:
            return None
        rows = torch.cat(self._rows)
        return rows - rows.mean(dim=0)

    def covariance(self, unbiased: bool = True) -> torch.Tensor:
        """The d x d covariance (built from the kept samples while n <= d)."""
        self._check_count()
        if not self._track_covariance:
            raise ConfigError("expected PixelMoments(covariance=True) for a covariance, got one without it")
        centred = self._centred_rows()
        if centred is not None:
            scatter = centred.T @ centred
        else:
            assert self._outer is not None and self._sum is not None
            mean = self._sum / self.count
            scatter = self._outer - self.count * torch.outer(mean, mean)
        return scatter / (self.count - 1 if unbiased else self.count)

    def gaussian_entropy(self, quantisation_step: float) -> float:
        """½ log det(2πe (Σ + step²/12 · I)) in nats: the Gaussian entropy of the dequantised data.

        The data are taken as quantised to ``quantisation_step`` and dequantised with
        uniform noise (variance step²/12 per value), which also keeps Σ invertible for
        small N. A Gaussian has the largest entropy of any distribution with covariance Σ,
        so for non-Gaussian data this over-estimates H(x): a ξ derived from it is an
        *estimate*, not a floor. With n <= d samples, log det(ε I_d + AᵀA) =
        (d − n) log ε + log det(ε I_n + AAᵀ) for the n x d centred samples A / √(n−1).
        """
        if not quantisation_step > 0:
            raise ConfigError(f"expected a positive quantisation step, got {quantisation_step}")
        self._check_count()
        epsilon = quantisation_step**2 / 12.0
        centred = self._centred_rows() if self._track_covariance else None
        if centred is not None:
            n, d = centred.shape
            gram = centred @ centred.T / (n - 1) + torch.eye(n, dtype=torch.float64) * epsilon
            sign, logdet = torch.linalg.slogdet(gram)
            logdet = logdet + (d - n) * math.log(epsilon) + d * math.log(TWO_PI_E)
        else:
            covariance = self.covariance()
            covariance = covariance + torch.eye(covariance.shape[0], dtype=torch.float64) * epsilon
            sign, logdet = torch.linalg.slogdet(TWO_PI_E * covariance)
        if float(sign) <= 0:
            raise ConfigError("expected a positive-definite covariance, got a singular one")
        return 0.5 * float(logdet)

    def mean_image_mse(self) -> float:
        """Tr Cov(x)/d: the per-value MSE of always answering the mean image, the trivial attacker.

        A number called an MSE floor that exceeds this cannot be one: the trivial
        attacker already does better.
        """
        self._check_count()
        assert self._sum is not None and self._squares is not None
        mean = self._sum / self.count
        return float((self._squares / self.count - mean * mean).clamp_min(0.0).mean())
