"""Vectorised per-class k-means against a slow per-class loop and known clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cem.mixture import assign_to_own_class, fit_class_mixture


def slow_lloyd(x: np.ndarray, y: np.ndarray, means: np.ndarray, k: int, iters: int) -> np.ndarray:
    """Plain per-class Lloyd iterations in float64 (no empty clusters occur in the test data)."""
    means = means.copy()
    for _ in range(iters):
        for c in np.unique(y):
            members = x[y == c]
            centres = means[c * k : (c + 1) * k]
            assign = ((members[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            for j in range(k):
                if (assign == j).any():
                    means[c * k + j] = members[assign == j].mean(0)
    return means


def clustered(seed: int = 0, classes: int = 3, k: int = 2, per: int = 30, dim: int = 5, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-3, 3, size=(classes * k, dim))
    x = np.concatenate([centres[g] + spread * rng.standard_normal((per, dim)) for g in range(classes * k)])
    y = np.repeat(np.arange(classes), k * per)
    return torch.from_numpy(x).float(), torch.from_numpy(y), centres


def test_recovers_separated_components_with_their_variances() -> None:
    x, y, centres = clustered()
    mixture = fit_class_mixture(x, y, 3, 2, generator=torch.Generator().manual_seed(0))
    groups = x.double().numpy().reshape(6, 30, -1)  # generated component by component
    for g in range(6):
        nearest = np.linalg.norm(centres - mixture.means[g].numpy(), axis=1).argmin()
        assert nearest // 2 == g // 2  # a component of its own class
        assert np.allclose(mixture.means[g].numpy(), groups[nearest].mean(0), atol=1e-5)
        assert np.allclose(mixture.variances[g].numpy(), groups[nearest].var(0), atol=1e-6)
    assert mixture.counts.tolist() == [30] * 6
    assert float(mixture.weights.sum()) == pytest.approx(1.0)
    assert torch.allclose(mixture.within_class_weights, torch.full((6,), 0.5))


def test_matches_slow_per_class_lloyd_from_same_start() -> None:
    x, y, _ = clustered(seed=1, spread=1.0)
    start = x[torch.tensor([0, 45, 60, 100, 130, 170])].clone()
    fast = fit_class_mixture(x, y, 3, 2, init_means=start, max_iter=5)
    slow = slow_lloyd(x.double().numpy(), y.numpy(), start.double().numpy(), 2, 5)
    assert np.allclose(fast.means.numpy(), slow, atol=1e-5)


def test_empty_component_is_reseeded_at_a_far_point() -> None:
    x, y, _ = clustered(seed=2, classes=2, k=2)
    start = torch.cat([x[:1], torch.full((1, 5), 1e3), x[60:61], x[100:101]])  # component 1 starts far away
    mixture = fit_class_mixture(x, y, 2, 2, init_means=start, max_iter=10)
    assert int(mixture.counts.min()) > 0
    assert float(mixture.means.abs().max()) < 10


def test_small_and_absent_classes_do_not_break_the_fit() -> None:
    x = torch.randn(7, 4)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1])  # class 1 has fewer samples than k, class 2 none
    mixture = fit_class_mixture(x, y, 3, 3, generator=torch.Generator().manual_seed(0))
    assert mixture.counts.view(3, 3).sum(1).tolist() == [5, 2, 0]
    assert torch.isfinite(mixture.means).all() and torch.isfinite(mixture.variances).all()
    assert float(mixture.weights.sum()) == pytest.approx(1.0)


def test_seeded_fit_is_deterministic_and_assignment_stays_in_class() -> None:
    x, y, _ = clustered(seed=3, spread=2.0)
    a = fit_class_mixture(x, y, 3, 2, generator=torch.Generator().manual_seed(5))
    b = fit_class_mixture(x, y, 3, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.means, b.means)
    component, sq = assign_to_own_class(x, y, a.means, 2)
    assert torch.equal(component // 2, y)
    brute = ((x[:, None] - a.means.view(3, 2, -1)[y]) ** 2).sum(-1).min(1).values
    assert torch.allclose(sq, brute, atol=1e-3)
