"""The two halves of a split classifier, for every registered arch.

What happens at the cut is the same for every backbone (reference_notes §1.1, §1.2):
the edge normalises its [0, 1] input (so no caller guesses the constants), runs the
arch's entries ``0..cut-1``, then an ``8``-channel bottleneck conv ending in a
Sigmoid, so the transmitted features lie in (0, 1) and Gaussian noise of a given σ
has a fixed meaning; the cloud starts with the matching linear expansion conv back
to the trunk's width, then the arch's remaining entries and its classifier.

PATROL's edge (``front_conv``, pruned ``edge_channels``) changes only the encoder:
the expansion conv maps back to the unpruned width (``decoder_in_channels``), so the
cloud's trunk is the same as without PATROL.

``bottleneck_channels=None`` is the paper's unprotected **No_defense** baseline:
no bottleneck conv, no Sigmoid and no expansion conv, so the edge sends the raw,
unbounded trunk output and the cloud starts directly with entry ``cut``.

Module names (``normalize``, ``features``, ``bottleneck``, ``expand``,
``classifier``) are the safetensors keys of every bundle, so they stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from cem.models.archs import get_arch
from cem.models.config import SplitModelConfig


class Normalize(nn.Module):
    """Per-channel affine input map; constants are buffers so they travel with the weights."""

    mean: torch.Tensor  # (1, C, 1, 1) buffer
    std: torch.Tensor  # (1, C, 1, 1) buffer

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SplitEncoder(nn.Module):
    """Edge half: normalise, the arch's entries ``0..cut-1``, bottleneck conv, Sigmoid.

    x: (B, in_channels, S, S) float in [0, 1] -> z: (B, *feature_shape) float in (0, 1);
    without a bottleneck the conv and Sigmoid are identities and z is unbounded.
    """

    def __init__(self, config: SplitModelConfig) -> None:
        super().__init__()
        self.config = config
        arch = get_arch(config.arch)
        self.normalize = Normalize(config.mean, config.std)
        self.features = nn.Sequential(*arch.edge_layers(config))
        self.bottleneck: nn.Module = nn.Identity()
        self.activation: nn.Module = nn.Identity()
        if config.bottleneck_channels is not None:
            self.bottleneck = nn.Conv2d(
                config.encoder_out_channels, config.bottleneck_channels, kernel_size=3, padding=1
            )
            self.activation = nn.Sigmoid()
        arch.init_edge(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bottleneck(self.features(self.normalize(x))))


class SplitDecoder(nn.Module):
    """Cloud half: linear bottleneck expansion (identity without a bottleneck), the arch's entries ``cut..``,
    flatten, classifier.

    z: (B, *feature_shape) float -> logits (B, num_classes).
    """

    def __init__(self, config: SplitModelConfig) -> None:
        super().__init__()
        self.config = config
        arch = get_arch(config.arch)
        self.expand: nn.Module = nn.Identity()
        if config.bottleneck_channels is not None:
            self.expand = nn.Conv2d(config.bottleneck_channels, config.decoder_in_channels, kernel_size=3, padding=1)
        self.features = nn.Sequential(*arch.cloud_layers(config))
        self.classifier = arch.classifier(config)
        arch.init_cloud(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.expand(z)), 1))


class SplitModel(nn.Module):
    """Both halves, for training. ``forward`` is ``decoder(encoder(x))`` without noise."""

    def __init__(self, config: SplitModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SplitEncoder(config)
        self.decoder = SplitDecoder(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def unsplit(self) -> nn.Sequential:
        """The same layers as one flat network (shares weights), for parity checks."""
        enc, dec = self.encoder, self.decoder
        return nn.Sequential(
            enc.normalize, *enc.features, enc.bottleneck, enc.activation,
            dec.expand, *dec.features, nn.Flatten(1), dec.classifier,
        )
