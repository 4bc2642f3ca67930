"""A synthetic attack split small enough that an attack runs in about a second: 24 fit, 8 validation and 4 scored
images (32x32, one channel: the GAN's critic needs 32x32) with (4, 8, 8) features, seeded."""

from __future__ import annotations

import torch

from attacker.attacks import AttackSplit, FeatureSet


def synthetic_split() -> AttackSplit:
    generator = torch.Generator().manual_seed(0)

    def features(n: int) -> FeatureSet:
        return FeatureSet(torch.rand(n, 1, 32, 32, generator=generator), torch.rand(n, 4, 8, 8, generator=generator))

    return AttackSplit("train", features(24), features(8), features(4))
