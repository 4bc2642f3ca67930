"""Per-class k-means mixtures of encoder features, fitted for all classes at once.

CEM (paper Alg. 1 lines 4-5) models the features of each class with k
components; component g = c·k + j belongs to class c. The fit is vectorised over
every class and component (reference_notes §8): one (N, K) distance GEMM per
Lloyd iteration of which each row keeps only its own class's k columns,
``index_add_``/``bincount`` statistics, and empty components re-seeded with the
farthest points of their class. There is no Python loop over classes or
components; the only loops are over k-means++ rounds (k of them) and Lloyd
iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cem.errors import ConfigError

ASSIGN_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class ClassMixture:
    """A fitted mixture with ``num_classes * k`` components (class-major order).

    means: (K, D); variances: (K, D) per-dimension variance around the mean;
    counts: (K,) int64 members; weights: (K,) global π = counts / N (sum to 1).
    """

    means: torch.Tensor
    variances: torch.Tensor
    counts: torch.Tensor
    num_classes: int
    k: int

    def __post_init__(self) -> None:
        expected = self.num_classes * self.k
        if (
            self.means.shape[0] != expected
            or self.variances.shape != self.means.shape
            or self.counts.shape != (expected,)
        ):
            raise ConfigError(
                f"expected means/variances ({expected}, D) and counts ({expected},), got "
                f"{tuple(self.means.shape)}, {tuple(self.variances.shape)}, {tuple(self.counts.shape)}"
            )

    @property
    def weights(self) -> torch.Tensor:
        counts = self.counts.to(self.means.dtype)
        return counts / counts.sum().clamp_min(1.0)

    @property
    def within_class_weights(self) -> torch.Tensor:
        """(K,) members / class size: each class's weights sum to 1 (the reference's π)."""
        counts = self.counts.to(self.means.dtype).view(self.num_classes, self.k)
        return (counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)).flatten()


def assign_to_own_class(
    features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, k: int,
    feature_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest component of each sample's own class.

    features: (N, D); labels: (N,) int64 in [0, C); means: (C·k, D); ``feature_sq``
    (N,) = ‖x‖², passed by callers that assign the same features repeatedly.
    Returns (component index g (N,) int64, squared distance (N,)). Not differentiable.
    """
    with torch.no_grad():
        if feature_sq is None:
            feature_sq = features.pow(2).sum(dim=1)
        rows = torch.arange(features.shape[0], device=features.device)
        mean_sq = means.pow(2).sum(dim=1)  # (K,)
        num_classes = means.shape[0] // k
        best_j = torch.empty(features.shape[0], dtype=torch.long, device=features.device)
        best_d = torch.empty(features.shape[0], dtype=features.dtype, device=features.device)
        for start in range(0, features.shape[0], ASSIGN_CHUNK_ROWS):
            x = features[start : start + ASSIGN_CHUNK_ROWS]
            x_sq = feature_sq[start : start + ASSIGN_CHUNK_ROWS].unsqueeze(1)
            dist = torch.addmm(mean_sq + x_sq, x, means.T, alpha=-2.0)  # (n, K) = ‖x‖² − 2x·μ + ‖μ‖²
            own = dist.view(x.shape[0], num_classes, k)[rows[: x.shape[0]], labels[start : start + x.shape[0]]]
            best_d[start : start + x.shape[0]], best_j[start : start + x.shape[0]] = own.min(dim=1)
        return labels * k + best_j, best_d.clamp_min(0.0)


def _sample_one_per_class(
    weights: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator | None
) -> torch.Tensor:
    """One index per class drawn with probability ∝ weights (exponential race); -1 for absent classes."""
    u = torch.rand(weights.shape, generator=generator, device=weights.device).clamp_min(1e-12)
    keys = torch.log(u) / weights  # weight 0 -> -inf, never drawn unless the class has nothing else
    best = torch.full((num_classes,), float("-inf"), device=weights.device, dtype=keys.dtype)
    best = best.scatter_reduce(0, labels, keys, reduce="amax")
    hit = keys == best[labels]
    rows = torch.arange(labels.shape[0], device=labels.device)
    chosen = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    return chosen.scatter_reduce(0, labels[hit], rows[hit], reduce="amax")


def seed_means(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """k-means++ seeding (D² weighting) run for every class in parallel: (C·k, D)."""
    means = torch.zeros(num_classes * k, features.shape[1], dtype=features.dtype, device=features.device)
    nearest = torch.ones(features.shape[0], dtype=features.dtype, device=features.device)
    classes = torch.arange(num_classes, device=features.device)
    for j in range(k):
        picked = _sample_one_per_class(nearest, labels, num_classes, generator)
        present = picked >= 0
        means[classes[present] * k + j] = features[picked[present]]
        dist = (features - means[labels * k + j]).pow(2).sum(dim=1)
        nearest = dist if j == 0 else torch.minimum(nearest, dist)
    return means


def _reseed_empty(
    means: torch.Tensor,
    counts: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    sq_dist: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Move each empty component onto a far point of its class (r-th empty gets the r-th farthest)."""
    num_classes = means.shape[0] // k
    empty = (counts == 0).view(num_classes, k)
    class_sizes = torch.bincount(labels, minlength=num_classes)
    rank = empty.long().cumsum(dim=1) - 1  # (C, k)
    usable = empty & (rank < class_sizes.view(-1, 1))
    if not bool(usable.any()):
        return means
    by_distance = torch.argsort(sq_dist, descending=True, stable=True)
    order = by_distance[torch.argsort(labels[by_distance], stable=True)]  # class-major, farthest first
    class_start = torch.cumsum(class_sizes, dim=0) - class_sizes
    slot = (class_start.view(-1, 1) + rank)[usable]
    means = means.clone()
    means[usable.flatten().nonzero().squeeze(1)] = features[order[slot]]
    return means


def fit_class_mixture(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    k: int,
    *,
    init_means: torch.Tensor | None = None,
    max_iter: int = 25,
    generator: torch.Generator | None = None,
) -> ClassMixture:
    """Lloyd's k-means within each class, all classes at once.

    features: (N, D) float; labels: (N,) int64 in [0, num_classes). ``init_means``
    (C·k, D) warm-starts from the previous epoch's fit; otherwise k-means++.
    Stops when no assignment changes or after ``max_iter`` iterations.
    """
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ConfigError(
            f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if k < 1 or max_iter < 1:
        raise ConfigError(f"expected k >= 1 and max_iter >= 1, got {k} and {max_iter}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"expected labels in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    features = features.detach().float()
    labels = labels.detach().long()
    n_components = num_classes * k
    if init_means is not None and init_means.shape == (n_components, features.shape[1]):
        means = init_means.detach().to(features).clone()
    else:
        means = seed_means(features, labels, num_classes, k, generator)
    feature_sq = features.pow(2).sum(dim=1)
    previous: torch.Tensor | None = None
    for _ in range(max_iter):
        assigned, sq_dist = assign_to_own_class(features, labels, means, k, feature_sq)
        if previous is not None and torch.equal(assigned, previous):
            break
        counts = torch.bincount(assigned, minlength=n_components)
        sums = torch.zeros_like(means).index_add_(0, assigned, features)
        means = torch.where((counts > 0).unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1).to(sums), means)
        means = _reseed_empty(means, counts, features, labels, sq_dist, k)
        previous = assigned
    assigned, _ = assign_to_own_class(features, labels, means, k, feature_sq)
    counts = torch.bincount(assigned, minlength=n_components)
    residual_sq = (features - means[assigned]).pow(2)
    sums_sq = torch.zeros_like(means).index_add_(0, assigned, residual_sq)  # (C*k, D)
    variances = sums_sq / counts.clamp_min(1).unsqueeze(1).to(means)
    return ClassMixture(means=means, variances=variances, counts=counts, num_classes=num_classes, k=k)
