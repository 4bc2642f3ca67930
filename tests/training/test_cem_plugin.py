"""The CEM plug-in: Eq. 5-7 against a direct float64 evaluation, and its gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cem.entropy import mixture_information_bound, mse_lower_bound
from cem.errors import ConfigError
from cem.mixture import ClassMixture
from cem.models import SplitModel, SplitModelConfig
from training.cem_plugin import CEMConfig, CEMRegularizer, MixtureNotFittedError

SIGMA = 0.1
N_TOTAL = 40


def known_mixture(dtype: torch.dtype = torch.float64) -> ClassMixture:
    """2 classes x 2 components in 3 dimensions with chosen means, variances and counts."""
    means = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.8, 0.8], [0.2, 0.8, 0.2], [0.8, 0.2, 0.8]], dtype=dtype)
    variances = torch.tensor([[0.01, 0.02, 0.03], [0.001, 0.002, 0.004], [0.05, 0.0, 0.01], [0.02, 0.02, 0.02]],
                             dtype=dtype)
    return ClassMixture(means=means, variances=variances, counts=torch.tensor([12, 8, 5, 15]), num_classes=2, k=2)


def regularizer(**overrides) -> CEMRegularizer:
    cem = CEMRegularizer(CEMConfig(lam=1.0, k=2, **overrides), noise_std=SIGMA, num_classes=2,
                         dataset_size=N_TOTAL, image_dim=64)
    cem.load_mixture(known_mixture())
    return cem


GAIN, GAMMA = 10.0, 0.01


def paper_units_scale(assign: np.ndarray, y: np.ndarray, mixture: ClassMixture, variances: np.ndarray) -> np.ndarray:
    """κ_j of the paper-unit normalisation written out per component in float64 (see cem_plugin docstring)."""
    n_components, dim = variances.shape
    counts = mixture.counts.numpy().astype(np.float64).reshape(2, 2)
    within = (counts / counts.sum(1, keepdims=True)).reshape(-1)
    per_class = N_TOTAL / 2
    kappa = np.zeros(n_components)
    for g in range(n_components):
        v_bar = variances[g].mean()
        effective = math.sqrt(variances[g].sum() / (variances[g] / (variances[g] + SIGMA**2) ** 2).sum())
        n = (assign == g).sum()
        rho = GAIN * n / (within[g] * per_class)
        cap = min(1.0, 0.99 / rho) if n else 1.0
        kappa[g] = (2 * GAIN / dim) * effective / (v_bar + GAMMA) * cap * 2 / len(set(y.tolist()))
    return kappa


def direct_paper_loss(z: np.ndarray, y: np.ndarray, mixture: ClassMixture, weights: np.ndarray, variances: np.ndarray):
    """Eq. 5, 6 and 7 written out per component in float64, in paper-λ units; returns (L_C, new π, new v)."""
    means = mixture.means.double().numpy()
    n_components = len(weights)
    assign = []
    for zi, yi in zip(z, y, strict=True):
        own = [yi * 2 + j for j in range(2)]
        assign.append(own[int(np.argmin([((zi - means[g]) ** 2).sum() for g in own]))])
    assign = np.array(assign)
    kappa = paper_units_scale(assign, np.asarray(y), mixture, variances)
    new_w, new_v = weights.copy(), variances.copy()
    batch = len(z)
    for g in range(n_components):
        members = z[assign == g]
        n = len(members)
        new_w[g] = (weights[g] * (N_TOTAL - batch) + n) / N_TOTAL
        if n:
            delta = ((members - means[g]) ** 2).mean(0)
            rho = n / (new_w[g] * N_TOTAL)
            new_v[g] = (1 - rho) * variances[g] + rho * delta
    loss = 0.0
    for g in range(n_components):
        if new_w[g] > 0:
            loss += kappa[g] * new_w[g] * (-math.log(new_w[g]) + 0.5 * np.log((new_v[g] + SIGMA**2) / SIGMA**2).sum())
    return loss, new_w, new_v, kappa


def test_loss_equals_direct_float64_eq7_and_persists_running_estimates() -> None:
    cem = regularizer()
    mixture = known_mixture()
    weights, variances = mixture.weights.numpy().astype(np.float64), mixture.variances.numpy().copy()
    rng = np.random.default_rng(0)
    for _ in range(3):  # the running π and v carry over between batches (Eq. 5-6)
        y = rng.integers(0, 2, size=9)
        z = rng.uniform(0, 1, size=(9, 3))
        expected, weights, variances, _ = direct_paper_loss(z, y, mixture, weights, variances)
        value = cem.loss(torch.from_numpy(z), torch.from_numpy(y))
        assert float(value) == pytest.approx(expected, rel=1e-12)



def test_float32_feature_maps_give_the_same_loss() -> None:
    rng = np.random.default_rng(1)
    y, z = rng.integers(0, 2, size=16), rng.uniform(0, 1, size=(16, 3))
    mixture = known_mixture()
    weights = mixture.weights.numpy().astype(np.float64)
    expected, _, _, _ = direct_paper_loss(z, y, mixture, weights, mixture.variances.numpy())
    feature_maps = torch.from_numpy(z).float().view(16, 3, 1, 1)  # (B, C, H, W) as the encoder emits
    assert float(regularizer().loss(feature_maps, torch.from_numpy(y))) == pytest.approx(expected, rel=1e-5)


def test_loss_falls_as_within_component_spread_shrinks() -> None:
    cem = regularizer(persist_updates=False)
    means = known_mixture().means
    labels = torch.tensor([0, 0, 1, 1] * 4)
    component = labels * 2 + torch.tensor([0, 1, 0, 1] * 4)
    direction = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    values = [float(cem.loss(means[component] + s * direction, labels)) for s in (0.2, 0.1, 0.05, 0.01, 0.0)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values  # consecutive pairs


def test_gradient_is_the_weighted_centre_pull() -> None:
    """∂L_C/∂z_i = κ_j (z_i − μ_j)/(N (v_j' + σ²)) with v_j' the updated variance."""
    cem = regularizer(persist_updates=False)
    y = torch.tensor([0, 0, 1, 1, 1])
    z = torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    cem.loss(z, y).backward()
    _, new_w, new_v, kappa = direct_paper_loss(z.detach().numpy(), y.numpy(), known_mixture(),
                                        known_mixture().weights.numpy().astype(np.float64),
                                        known_mixture().variances.numpy())
    means = known_mixture().means.numpy()
    for i in range(5):
        g = min((int(y[i]) * 2 + j for j in range(2)), key=lambda g: ((z[i].detach().numpy() - means[g]) ** 2).sum())
        expected = kappa[g] * (z[i].detach().numpy() - means[g]) / (N_TOTAL * (new_v[g] + SIGMA**2))
        assert np.allclose(z.grad[i].numpy(), expected, rtol=1e-10)


def test_cem_gradient_reaches_encoder_weights_only() -> None:
    torch.manual_seed(0)
    model = SplitModel(SplitModelConfig(width=0.125, in_channels=1, mean=(0.3,), std=(0.3,)))
    x, y = torch.rand(12, 1, 32, 32), torch.arange(12) % 3
    cem = CEMRegularizer(CEMConfig(lam=1.0, k=2), noise_std=SIGMA, num_classes=3, dataset_size=12, image_dim=1024)
    with torch.no_grad():
        cem.refit(model.encoder(x), y, generator=torch.Generator().manual_seed(0))
    cem.loss(model.encoder(x), y).backward()
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)
    assert sum(float(g.abs().sum()) for g in encoder_grads) > 0
    assert all(p.grad is None for p in model.decoder.parameters())
    assert cem.mixture is not None and not cem.mixture.means.requires_grad


def test_reference_log_hinge_matches_direct_evaluation() -> None:
    cem = regularizer(loss_form="ref_log_hinge", ref_tau=0.125, ref_gamma=0.01, ref_gain=10.0)
    mixture = known_mixture()
    y = np.array([0, 0, 0, 1])
    z = np.array([[0.25, 0.2, 0.1], [0.7, 0.9, 0.8], [0.3, 0.3, 0.3], [0.9, 0.1, 0.6]])
    means, within = mixture.means.numpy(), mixture.within_class_weights.numpy()
    stored = mixture.variances.numpy().mean(1)
    assign = [min((yi * 2 + j for j in range(2)), key=lambda g: ((zi - means[g]) ** 2).sum())
              for zi, yi in zip(z, y, strict=True)]
    per_class = N_TOTAL / 2
    expected = 0.0
    for g in set(assign):
        rows = [i for i, a in enumerate(assign) if a == g]
        b = np.mean([((z[i] - means[g]) ** 2).mean() for i in rows])
        rho = min(10.0 * len(rows) / (within[g] * per_class), 0.99)
        s2 = rho * b + (1 - rho) * stored[g]
        expected += within[g] * max(math.log(s2 + 0.01) - math.log(0.125 * SIGMA**2 + 0.01), 0.0)
    expected /= len(set(y))
    assert float(cem.loss(torch.from_numpy(z), torch.from_numpy(y))) == pytest.approx(expected, rel=1e-10)


def test_noisy_mode_removes_the_noise_variance_from_sigma_j() -> None:
    clean, noisy = regularizer(), regularizer(evaluate_on="noisy")
    shifted = known_mixture()
    noisy.load_mixture(ClassMixture(shifted.means, shifted.variances + SIGMA**2, shifted.counts, 2, 2))
    assert noisy.bound()["information_bound"] == pytest.approx(clean.bound()["information_bound"], rel=1e-12)


def test_bound_reports_relative_entropy_and_xi() -> None:
    cem = regularizer()
    mixture = known_mixture()
    info = float(mixture_information_bound(mixture.weights, mixture.variances, SIGMA))
    bound = cem.bound()
    assert bound["information_bound"] == pytest.approx(info)
    assert bound["entropy_bound"] == pytest.approx(-info)
    assert bound["mse_bound_xi"] == pytest.approx(mse_lower_bound(-info, 64))


def test_lr_coupling_follows_the_reference() -> None:
    coupled = regularizer(lr_coupling="ref")
    assert coupled.scale(0.05) == pytest.approx(0.02) and coupled.scale(0.002) == pytest.approx(0.5)
    assert coupled.scale(4e-4) == 1.0 and coupled.weight(0.05) == pytest.approx(0.02)
    assert regularizer(lr_coupling="none").scale(0.05) == 1.0
    assert regularizer().scale(0.05) == pytest.approx(0.02), "paper units couple λ to the lr by default"


def test_misuse_is_a_clear_error() -> None:
    cem = CEMRegularizer(CEMConfig(lam=1.0), noise_std=SIGMA, num_classes=2, dataset_size=10, image_dim=4)
    with pytest.raises(MixtureNotFittedError, match="refit"):
        cem.loss(torch.rand(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="noise_std > 0"):
        CEMRegularizer(CEMConfig(lam=1.0), noise_std=0.0, num_classes=2, dataset_size=10, image_dim=4)
    with pytest.raises(ConfigError, match="loss form"):
        CEMConfig(loss_form="full")
    with pytest.raises(ConfigError, match="2 classes x 3, got 2 x 2"):
        cem.load_mixture(known_mixture())


def isotropic_state(sigma: float, dim: int = 64, k: int = 3, classes: int = 4, n_total: int = 4000, seed: int = 0):
    """A fitted-looking mixture with isotropic components and a batch drawn from it (features, labels)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(classes * k, dim, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    spread = 0.02  # per-dimension variance of the clean features around their component mean
    counts = torch.full((classes * k,), n_total // (classes * k))
    mixture = ClassMixture(means=means, variances=torch.full_like(means, spread), counts=counts,
                           num_classes=classes, k=k)
    labels = torch.arange(128) % classes
    component = labels * k + torch.arange(128) % k
    z = means[component] + spread**0.5 * torch.randn(128, dim, generator=gen, dtype=torch.float64)
    return mixture, z, labels


@pytest.mark.parametrize("sigma", [0.1, 0.025])
def test_paper_units_give_the_reference_pull_at_every_lr_stage(sigma: float) -> None:
    """Per-sample |λ·s(lr)·∂L_C/∂z| / |∂L_task/∂z| of paper_diag equals the reference's within 15 %.

    The tolerance covers the two forms' different variance estimates (the reference's
    isotropic blend vs Eq. 6's per-dimension update), which agree only on average.
    """
    mixture, z, labels = isotropic_state(sigma)
    task_grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / z.shape[0]
    pulls = {}
    for form in ("paper_diag", "ref_log_hinge"):
        cem = CEMRegularizer(CEMConfig(lam=16.0, k=3, loss_form=form, persist_updates=False), noise_std=sigma,
                             num_classes=4, dataset_size=4000, image_dim=1024)
        cem.load_mixture(mixture)
        leaf = z.clone().requires_grad_()
        cem.loss(leaf, labels).backward()
        pulls[form] = (cem, leaf.grad.norm(dim=1))
    task_norm = task_grad.norm(dim=1)
    for lr in (0.05, 0.01, 0.002, 4e-4, 8e-5):  # the reference's five lr stages
        ours = pulls["paper_diag"][0].weight(lr) * pulls["paper_diag"][1] / task_norm
        ref = pulls["ref_log_hinge"][0].weight(lr) * pulls["ref_log_hinge"][1] / task_norm
        ratio = float((ours / ref).median())
        assert ratio == pytest.approx(1.0, abs=0.15), (lr, ratio)


def test_raw_eq7_would_pull_far_harder_than_the_reference() -> None:
    """Why the normalisation exists: unnormalised Eq. 7 pulls ~D/(2·gain) times harder per unit λ."""
    mixture, z, labels = isotropic_state(0.1)
    cem = CEMRegularizer(CEMConfig(lam=16.0, k=3, persist_updates=False), noise_std=0.1, num_classes=4,
                         dataset_size=4000, image_dim=1024)
    cem.load_mixture(mixture)
    counts = torch.bincount(labels * 3 + torch.arange(128) % 3, minlength=12).double()
    kappa = cem.reference_pull_scale(counts, labels, z.shape[1])
    assert float(kappa.max()) < 0.5 and float(kappa.min()) > 0.2  # 2·10/64 · (0.03/0.03) = 0.3125
