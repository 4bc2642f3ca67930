"""Inversion networks: the decoding network of the paper's supplement S.3 and a WGAN-GP critic.

``InversionNetwork`` maps transmitted features back to images. It follows the
reference's ``res_normN_AE`` (reference_notes §5.1): a pre-activation residual
block from the feature channels to ``channels``, ``num_blocks`` more residual
blocks, one transposed-conv upsampling stage per factor of two between the
feature side and the image side, a residual block down to the image channels and
a Sigmoid, so reconstructions lie in (0, 1) like the images they are scored
against. At the paper's shape (8x8x8 features, 3x32x32 images, 8 blocks, 64
channels) it has exactly 711,539 parameters.

The number of upsampling stages is derived from the actual shapes,
log2(image_size / feature_size), never from a data set name (fixes B20/B21).

``WassersteinCritic`` is the GMI ``DGWGAN32`` critic (reference_notes §5.2):
three 5x5 stride-2 convs (the last two with affine instance norm) and a 4x4
score conv; larger images give a score map that is averaged.

Both live in the kernel so training's adversarial defenses can reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cem.errors import ConfigError


@dataclass(frozen=True)
class InversionConfig:
    """Shapes and size of an ``InversionNetwork``.

    ``feature_channels``/``feature_size``: the transmitted tensor (C, H, H);
    ``image_channels``/``image_size``: the reconstruction (C, S, S), S = H * 2**k.
    """

    feature_channels: int = 8
    feature_size: int = 8
    image_channels: int = 3
    image_size: int = 32
    num_blocks: int = 8
    channels: int = 64

    def __post_init__(self) -> None:
        for name in ("feature_channels", "feature_size", "image_channels", "image_size", "channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.num_blocks < 0:
            raise ConfigError(f"expected num_blocks >= 0, got {self.num_blocks}")
        ratio, remainder = divmod(self.image_size, self.feature_size)
        if remainder or ratio & (ratio - 1):
            raise ConfigError(
                "expected image_size to be feature_size times a power of two, got "
                f"image_size {self.image_size} and feature_size {self.feature_size}"
            )

    @property
    def upsampling_stages(self) -> int:
        """log2(image_size / feature_size): one stride-2 transposed conv per factor of two."""
        return (self.image_size // self.feature_size).bit_length() - 1

    @classmethod
    def for_features(
        cls,
        feature_shape: tuple[int, int, int],
        image_channels: int,
        image_size: int,
        *,
        num_blocks: int = 8,
        channels: int = 64,
    ) -> InversionConfig:
        """Config for inverting features of ``feature_shape`` (C, H, W) into (image_channels, S, S) images."""
        c, h, w = feature_shape
        if h != w:
            raise ConfigError(f"expected square features, got shape {tuple(feature_shape)}")
        return cls(c, h, image_channels, image_size, num_blocks, channels)


class PreActResBlock(nn.Module):
    """ReLU(BN(x)) -> conv3x3 -> BN -> ReLU -> conv3x3, plus a shortcut; no activation after the sum.

    The shortcut is the identity when the channel count is kept, else conv1x1 (no bias) + BN.
    (B, in, H, W) -> (B, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class InversionNetwork(nn.Module):
    """Decoding network of S.3: features (B, Cf, H, H) -> images (B, Ci, S, S) in (0, 1)."""

    def __init__(self, config: InversionConfig) -> None:
        super().__init__()
        self.config = config
        width = config.channels
        layers: list[nn.Module] = [PreActResBlock(config.feature_channels, width), nn.ReLU()]
        for _ in range(config.num_blocks):
            layers += [PreActResBlock(width, width), nn.ReLU()]
        for _ in range(config.upsampling_stages):
            layers += [
                nn.ConvTranspose2d(width, width, kernel_size=3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
        layers += [PreActResBlock(width, config.image_channels), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        expected = (self.config.feature_channels, self.config.feature_size, self.config.feature_size)
        if z.dim() != 4 or tuple(z.shape[1:]) != expected:
            raise ConfigError(f"expected features of shape (B, {', '.join(map(str, expected))}), got {tuple(z.shape)}")
        return self.layers(z)


@dataclass(frozen=True)
class CriticConfig:
    """``image_channels``/``image_size`` of the judged images; ``dim`` is the first conv's width."""

    image_channels: int = 3
    image_size: int = 32
    dim: int = 64

    def __post_init__(self) -> None:
        if self.image_channels < 1 or self.dim < 1:
            raise ConfigError(f"expected image_channels and dim >= 1, got {self.image_channels} and {self.dim}")
        if self.image_size < 32:
            raise ConfigError(
                f"expected image_size >= 32 (three stride-2 convs and a 4x4 score), got {self.image_size}"
            )


class WassersteinCritic(nn.Module):
    """DGWGAN32 critic: images (B, C, S, S) in [0, 1] -> one unbounded score per image (B,)."""

    def __init__(self, config: CriticConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim

        def down(cin: int, cout: int, norm: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=5, stride=2, padding=2)]
            if norm:
                layers.append(nn.InstanceNorm2d(cout, affine=True))
            return layers + [nn.LeakyReLU(0.2)]

        self.layers = nn.Sequential(
            *down(config.image_channels, dim, norm=False),
            *down(dim, 2 * dim, norm=True),
            *down(2 * dim, 4 * dim, norm=True),
            nn.Conv2d(4 * dim, 1, kernel_size=4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1).mean(dim=1)
