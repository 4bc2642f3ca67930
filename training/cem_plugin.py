"""The CEM regulariser as a plug-in for any training loop (paper Alg. 1, Eq. 5-8).

Usage, whatever the loop and the defenses::

    cem = CEMRegularizer(CEMConfig(lam=16), noise_std=σ, num_classes=C,
                         dataset_size=N, image_dim=C_in·H·W)
    for epoch ...:
        for x, y in loader:
            z = encoder(x)                                  # clean features
            loss = task_loss + cem.weight(lr) * cem.loss(z, y)   # one backward
        cem.refit(epoch_features, epoch_labels)              # once per epoch

``loss`` depends on the encoder only (the mixture is detached), so a single
backward of the summed loss is exactly the reference's two-backward gradient
injection (reference_notes §3.4).

**λ is the paper's λ** (``LAMBDA_UNITS``). The paper's λ = 16 is the λ of the
authors' code, whose L_C is a log-hinge on one isotropic variance per component,
divided by the number of classes in the batch, and whose gradient is multiplied
by s(lr) = 0.001/lr (reference_notes §3.3.2-3.4). Per sample, that code pulls a
clean feature towards its own-class centroid with

    ∂L_ref/∂z_i = C/(#classes in batch) · 2·gain · (z_i − μ_j) / (N · D · (s_j² + γ))

(gain = 10, γ = 0.01, D feature dimensions, N training images, ρ_j uncapped).
``loss`` returns every form in those units: ``ref_log_hinge`` *is* the unit,
and ``paper_diag`` is multiplied, per component, by the factor that gives it the
same per-sample pull on an isotropic component (``reference_pull_scale``):

    κ_j = C/(#classes in batch) · (2·gain/D) · u_j/(v̄_j + γ) · min(1, ρ-cap),
    u_j = sqrt(Σ_d v_jd / Σ_d v_jd/(v_jd + σ²)²)

(v̄_j = mean_d v_jd). u_j makes the expected norm of the two per-sample pulls
equal when residuals have the component's variances; on an isotropic component
u_j = v̄_j + σ². So ``--cem-lambda 16`` exerts on the encoder what λ = 16 exerts in the
authors' code, at every learning-rate stage when the reference coupling
(``lr_coupling="ref"``, the default) is on. The per-dimension shape of the
paper's loss (weights 1/(v_jd + σ²)) is kept. docs/training.md has the measured
gradient ratios (``benchmarks/cem_units.py``).

Two loss forms:

* ``paper_diag`` (default): Eq. 7 with Σ_p = σ²I and diagonal Σ_j. Each batch
  assigns z to the nearest own-class component, updates π by Eq. 5 and the
  per-dimension variances by Eq. 6 (written back, as in the paper, so the
  estimates run through the epoch). Before normalisation its per-sample
  gradient is ∂L_C/∂z_i = (z_i − μ_j)/(N (v_j + σ²)), a centre pull weighted by
  1/(v + σ²).
* ``ref_log_hinge``: the reference code's isotropic, non-persistent blend with
  within-class weights and ReLU(log(s² + γ) − log(τσ² + γ)) (reference_notes §3.3.2).

``evaluate_on``: ``clean`` (reference; default) fits the mixture on, and
evaluates L_C on, the encoder output before noise, so Σ_j is the signal
covariance; ``noisy`` (paper Alg. 1) uses z + ε, so the fitted variance already
contains σ² and Σ_j = max(v − σ², 0).

The bound reported by ``bound`` is always the unnormalised Eq. 16 in nats: the
normalisation changes how hard training pulls, never the number reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from cem.entropy import (
    component_information,
    mixture_information_bound,
    mse_lower_bound,
    reference_log_hinge,
    relative_conditional_entropy,
    weight_entropy_terms,
)
from cem.errors import CEMError, ConfigError
from cem.manifest import MetricsRecord
from cem.mixture import ClassMixture, assign_to_own_class, fit_class_mixture
from cem.units import LAMBDA_UNITS

LOSS_FORMS = ("paper_diag", "ref_log_hinge")
FEATURE_SOURCES = ("clean", "noisy")
LR_COUPLINGS = ("none", "ref")
REF_COUPLING_LR = 0.001
REF_COUPLING_FLOOR = 4.1e-4
REF_RHO_CAP = 0.99


class MixtureNotFittedError(CEMError):
    """``loss`` was called before the first ``refit``."""


@dataclass(frozen=True)
class CEMConfig:
    """CEM settings. ``lam`` = 0 keeps the mixture (for the reported bound) but adds no loss;
    ``None`` means "the data set's default" and is filled in by ``training.config.resolve_config``."""

    lam: float | None = None
    k: int = 3
    loss_form: str = "paper_diag"
    evaluate_on: str = "clean"
    lr_coupling: str = "ref"
    warmup_epochs: int = 1
    kmeans_iters: int = 10
    persist_updates: bool = True
    ref_gain: float = 10.0
    ref_gamma: float = 0.01
    ref_tau: float = 0.125

    def __post_init__(self) -> None:
        if self.lam is not None and not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ConfigError(f"expected cem lambda >= 0, got {self.lam}")
        if self.k < 1:
            raise ConfigError(f"expected cem k >= 1 components per class, got {self.k}")
        for value, allowed, what in (
            (self.loss_form, LOSS_FORMS, "cem loss form"),
            (self.evaluate_on, FEATURE_SOURCES, "cem evaluate_on"),
            (self.lr_coupling, LR_COUPLINGS, "cem lr coupling"),
        ):
            if value not in allowed:
                raise ConfigError(f"expected {what} in {allowed}, got {value!r}")
        if self.warmup_epochs < 1:
            raise ConfigError(
                "expected cem warmup_epochs >= 1 (the first mixture needs one epoch of features),"
                f" got {self.warmup_epochs}"
            )
        if self.kmeans_iters < 1 or self.ref_gain <= 0 or self.ref_gamma <= 0 or self.ref_tau <= 0:
            raise ConfigError("expected kmeans_iters >= 1 and positive ref_gain, ref_gamma, ref_tau")

    def to_dict(self) -> dict:
        return {**asdict(self), "lambda_units": LAMBDA_UNITS}


class CEMRegularizer:
    """Holds the per-class mixture and turns encoder features into L_C.

    noise_std: σ of the transmitted-feature noise (Σ_p = σ²I), must be > 0;
    dataset_size: N of Eq. 5-6; image_dim: d of Theorem 1 (C·H·W of the input).
    """

    def __init__(
        self, config: CEMConfig, *, noise_std: float, num_classes: int, dataset_size: int, image_dim: int
    ) -> None:
        if not noise_std > 0:
            raise ConfigError(f"expected noise_std > 0 for CEM (the bound needs Σ_p = σ²I), got {noise_std}")
        if config.lam is None:
            raise ConfigError("expected a resolved cem lambda (a number), got None; see training.config.resolve_config")
        if num_classes < 1 or dataset_size < 1 or image_dim < 1:
            raise ConfigError(
                "expected positive num_classes, dataset_size, image_dim,"
                f" got {num_classes}, {dataset_size}, {image_dim}"
            )
        self.config = config
        self.noise_std = float(noise_std)
        self.num_classes = num_classes
        self.dataset_size = dataset_size
        self.image_dim = image_dim
        self.mixture: ClassMixture | None = None
        self._weights: torch.Tensor | None = None  # (K,) running π (Eq. 5)
        self._variances: torch.Tensor | None = None  # (K, D) running diagonal Σ (Eq. 6)

    def weight(self, lr: float) -> float:
        """λ·s(lr): the factor of L_C in the total loss at learning rate ``lr``."""
        return float(self.config.lam or 0.0) * self.scale(lr)

    def scale(self, lr: float) -> float:
        """s(lr) of reference_notes §3.4: 0.001/lr until lr < 4.1e-4, then 1; 1 without coupling."""
        if self.config.lr_coupling == "ref" and lr >= REF_COUPLING_FLOOR:
            return REF_COUPLING_LR / lr
        return 1.0

    def active(self, epoch: int) -> bool:
        """Whether epoch (1-based) trains with L_C: λ > 0, past warm-up, and a mixture exists."""
        return bool(self.config.lam) and epoch > self.config.warmup_epochs and self.mixture is not None

    def load_mixture(self, mixture: ClassMixture) -> None:
        """Use a given mixture (and restart the running Eq. 5-6 estimates from it)."""
        if mixture.num_classes != self.num_classes or mixture.k != self.config.k:
            raise ConfigError(
                f"expected a mixture of {self.num_classes} classes x {self.config.k}, got "
                f"{mixture.num_classes} x {mixture.k}"
            )
        self.mixture = mixture
        self._weights = mixture.weights.clone()
        self._variances = mixture.variances.clone()

    def refit(
        self, features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, float]:
        """Fit the per-class mixture on one epoch of features and return its bound (see ``bound``).

        features: (N, ...) detached features (clean or noisy per ``evaluate_on``); labels: (N,).
        Warm-starts from the previous fit's means.
        """
        init = self.mixture.means if self.mixture is not None else None
        mixture = fit_class_mixture(
            features.flatten(1), labels, self.num_classes, self.config.k,
            init_means=init, max_iter=self.config.kmeans_iters, generator=generator,
        )
        self.load_mixture(mixture)
        return self.bound()

    def bound(self) -> dict[str, float]:
        """Eq. 16 / Eq. 3 / Theorem 1 on the fitted mixture (H(x) := 0 nats, see cem.entropy), as
        manifest metrics JSON (``MetricsRecord.to_dict``: the relative ξ under ``mse_bound_xi``)."""
        if self.mixture is None:
            raise MixtureNotFittedError("expected refit() before bound(), got no mixture")
        with torch.no_grad():
            info = float(
                mixture_information_bound(self.mixture.weights, self._signal(self.mixture.variances), self.noise_std)
            )
        entropy = relative_conditional_entropy(info)
        return MetricsRecord(
            information_bound=info,
            entropy_bound=entropy,
            entropy_bound_per_dim=entropy / self.image_dim,
            xi_relative=mse_lower_bound(entropy, self.image_dim),
        ).to_dict()

    def _require_fit(self, caller: str) -> tuple[ClassMixture, torch.Tensor, torch.Tensor]:
        """The fitted mixture and the running π (K,) and Σ (K, D); raises before ``refit``/``load_mixture``."""
        if self.mixture is None or self._weights is None or self._variances is None:
            raise MixtureNotFittedError(f"expected refit() before {caller}(), got no mixture")
        return self.mixture, self._weights, self._variances

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_C of one batch. z: (B, ...) encoder features (requires grad); labels: (B,) -> scalar."""
        mixture, _, _ = self._require_fit("loss")
        flat = z.flatten(1)  # (B, D)
        means = mixture.means.to(flat)
        component, _ = assign_to_own_class(flat.detach(), labels, means, self.config.k)
        residual = flat - means[component]  # (B, D), differentiable
        counts = torch.bincount(component, minlength=means.shape[0]).to(flat.dtype)  # (K,)
        if self.config.loss_form == "ref_log_hinge":
            return self._reference_loss(residual, component, counts, labels)
        scale = self.reference_pull_scale(counts, labels, flat.shape[1]).to(flat)
        return self._paper_loss(residual, component, counts, scale)

    def reference_pull_scale(self, counts: torch.Tensor, labels: torch.Tensor, feature_dim: int) -> torch.Tensor:
        """κ_j (K,): the factor that gives component j of ``paper_diag`` the reference's per-sample pull.

        Derived in the module docstring: the reference pulls with 2·gain/(N_c·D·(s² + γ)) per
        class in the batch, Eq. 7 with 1/(N·(v_d + σ²)) per dimension; with N_c = N/C, κ_j equates
        the expected norms of the two pulls. The reference caps its blend share ρ_j at 0.99, which
        weakens its pull on small data sets; the same cap factor is applied here. Detached.
        """
        config = self.config
        _, _, running_variances = self._require_fit("reference_pull_scale")
        with torch.no_grad():
            variances = self._signal(running_variances).to(counts)  # (K, D)
            noise_var = self.noise_std**2
            mean_var = variances.mean(dim=1)  # (K,) v̄_j, the reference's isotropic variance
            weighted = (variances / (variances + noise_var).pow(2)).sum(dim=1)
            effective = torch.where(weighted > 0, (variances.sum(dim=1) / weighted.clamp_min(1e-30)).sqrt(),
                                    mean_var + noise_var)  # u_j; = v̄_j + σ² when isotropic
            per_component = (2.0 * config.ref_gain / feature_dim) * effective / (mean_var + config.ref_gamma)
            rho = self._reference_share(counts)
            cap = (REF_RHO_CAP / rho.clamp_min(1e-12)).clamp(max=1.0)
            classes_in_batch = (torch.bincount(labels, minlength=self.num_classes) > 0).sum().clamp_min(1).to(counts)
            return per_component * cap * (self.num_classes / classes_in_batch)

    def _signal(self, variances: torch.Tensor) -> torch.Tensor:
        """Σ_j from fitted variances: as is on clean features, minus σ² on noisy ones."""
        if self.config.evaluate_on == "noisy":
            return (variances - self.noise_std**2).clamp_min(0.0)
        return variances

    def _reference_share(self, counts: torch.Tensor) -> torch.Tensor:
        """The reference's uncapped blend share ρ_j = gain·n_j/(w_j·N_c) (within-class w, N_c = N/C), (K,)."""
        mixture, _, _ = self._require_fit("loss")
        within = mixture.within_class_weights.to(counts)
        per_class = self.dataset_size / self.num_classes
        return self.config.ref_gain * counts / (within * per_class).clamp_min(1e-12)

    def _paper_loss(
        self, residual: torch.Tensor, component: torch.Tensor, counts: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 5-7 on one batch, each component's term multiplied by ``scale`` (κ_j, detached)."""
        _, running_weights, running_variances = self._require_fit("loss")
        weights = running_weights.to(residual)
        variances = running_variances.to(residual)
        n_total = float(self.dataset_size)
        batch_var = torch.zeros_like(variances).index_add(0, component, residual.pow(2))
        batch_var = batch_var / counts.clamp_min(1.0).unsqueeze(1)  # ΔΣ_j, (K, D)
        new_weights = (weights * (n_total - residual.shape[0]) + counts) / n_total  # Eq. 5
        rho = counts / (new_weights * n_total).clamp_min(1e-12)  # Eq. 6 share, in [0, 1]
        new_variances = (1.0 - rho).unsqueeze(1) * variances + rho.unsqueeze(1) * batch_var
        if self.config.persist_updates:
            self._weights = new_weights.detach()
            self._variances = new_variances.detach()
        terms = weight_entropy_terms(new_weights) + new_weights * component_information(
            self._signal(new_variances), self.noise_std)
        return (scale * terms).sum()

    def _reference_loss(
        self, residual: torch.Tensor, component: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        mixture, _, _ = self._require_fit("loss")
        within = mixture.within_class_weights.to(residual)  # (K,)
        rho = self._reference_share(counts).clamp(max=REF_RHO_CAP)
        stored = self._signal(mixture.variances).mean(dim=1).to(residual)  # (K,) isotropic
        batch_var = torch.zeros_like(stored).index_add(0, component, residual.pow(2).mean(dim=1))
        batch_var = batch_var / counts.clamp_min(1.0)
        blended = rho * batch_var + (1.0 - rho) * stored
        terms = within * reference_log_hinge(blended, self.noise_std, self.config.ref_tau, self.config.ref_gamma)
        terms = torch.where(counts > 0, terms, torch.zeros_like(terms))
        classes_in_batch = (torch.bincount(labels, minlength=self.num_classes) > 0).sum().clamp_min(1)
        return terms.sum() / classes_in_batch.to(terms)
