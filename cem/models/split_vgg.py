"""VGG11 with batch norm, split into an edge encoder and a cloud decoder.

Follows the reference's ``vgg11_bn_sgm`` (reference_notes §1.1): the 13 entries
of VGG config "A" (convs and max-pools both count), a cut after entry ``c-1``,
an ``8``-channel bottleneck conv on the edge side ending in a Sigmoid so the
transmitted features lie in (0, 1) and Gaussian noise of a given σ has a fixed
meaning, and the matching linear expansion conv at the start of the cloud side.

``bottleneck_channels=None`` is the paper's unprotected **No_defense** baseline:
no bottleneck conv, no Sigmoid and no expansion conv, so the edge sends the raw
ReLU/max-pool output of VGG entry ``c-1`` (unbounded, ``128·width`` channels at
cut 4) and the cloud starts directly with entry ``c``. ``None`` is the one
representation of "no bottleneck" everywhere (config, manifest, defenses record).

Inputs are images in [0, 1]; normalisation with the data set's constants is the
encoder's first layer, so no caller ever has to guess them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cem.errors import ConfigError

VGG11_ENTRIES: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@dataclass(frozen=True)
class SplitModelConfig:
    """Everything needed to rebuild either half of a split model.

    ``width`` multiplies every VGG channel count and the classifier's hidden size,
    so small configurations train in seconds on a CPU. ``bottleneck_channels=None``
    removes the bottleneck (No_defense baseline; serialised as JSON ``null``).
    """

    arch: str = "vgg11_bn_sgm"
    cut_layer: int = 4
    bottleneck_channels: int | None = 8
    width: float = 1.0
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.arch != "vgg11_bn_sgm":
            raise ConfigError(f"expected arch 'vgg11_bn_sgm', got {self.arch!r}")
        if not 1 <= self.cut_layer <= len(VGG11_ENTRIES) - 1:
            raise ConfigError(f"expected cut_layer in 1..{len(VGG11_ENTRIES) - 1}, got {self.cut_layer}")
        if self.bottleneck_channels is not None and (
            not isinstance(self.bottleneck_channels, int) or self.bottleneck_channels < 1
        ):
            raise ConfigError(
                f"expected bottleneck_channels >= 1 or None (no bottleneck), got {self.bottleneck_channels!r}"
            )
        if not 0 < self.width <= 4:
            raise ConfigError(f"expected width in (0, 4], got {self.width}")
        if self.in_channels < 1 or self.image_size < 32 or self.num_classes < 2:
            raise ConfigError(
                "expected in_channels >= 1, image_size >= 32 and num_classes >= 2, got "
                f"{self.in_channels}, {self.image_size}, {self.num_classes}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ConfigError(f"expected {self.in_channels} normalisation values, got mean {self.mean} std {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"expected positive std, got {self.std}")

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "cut_layer": self.cut_layer,
            "bottleneck_channels": self.bottleneck_channels,
            "width": self.width,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SplitModelConfig:
        """The config of ``to_dict``. Keys it does not know are ignored on purpose, so bundles that
        carry one still load (e.g. ``"extra"``, a field this class once had and never read)."""
        try:
            return cls(
                arch=data["arch"],
                cut_layer=int(data["cut_layer"]),
                bottleneck_channels=_optional_int(data["bottleneck_channels"]),
                width=float(data["width"]),
                in_channels=int(data["in_channels"]),
                image_size=int(data["image_size"]),
                num_classes=int(data["num_classes"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"expected a complete model config, got {data!r} ({exc})") from exc

    def channels(self, entry: int | str) -> int | str:
        return entry if entry == "M" else max(1, round(int(entry) * self.width))

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensor the edge transmits."""
        side = self.image_size
        for entry in VGG11_ENTRIES[: self.cut_layer]:
            if entry == "M":
                side //= 2
        channels = self.encoder_out_channels if self.bottleneck_channels is None else self.bottleneck_channels
        return (channels, side, side)

    @property
    def has_bottleneck(self) -> bool:
        """False for the No_defense baseline: the edge sends unbounded VGG features, not Sigmoid outputs."""
        return self.bottleneck_channels is not None

    @property
    def encoder_out_channels(self) -> int:
        convs = [e for e in VGG11_ENTRIES[: self.cut_layer] if e != "M"]
        return int(self.channels(convs[-1])) if convs else self.in_channels


def _optional_int(value: object) -> int | None:
    """JSON ``null`` stays ``None`` (no bottleneck); anything else must be an integer."""
    return None if value is None else int(value)  # type: ignore[call-overload]


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


def _vgg_layers(config: SplitModelConfig, entries: tuple[int | str, ...], in_channels: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels = in_channels
    for entry in entries:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = int(config.channels(entry))
        layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return layers


class SplitEncoder(nn.Module):
    """Edge half: normalise, VGG entries ``0..cut-1``, bottleneck conv, Sigmoid.

    x: (B, in_channels, S, S) float in [0, 1] -> z: (B, *feature_shape) float in (0, 1);
    without a bottleneck the conv and Sigmoid are identities and z is >= 0, unbounded.
    """

    def __init__(self, config: SplitModelConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = Normalize(config.mean, config.std)
        self.features = nn.Sequential(*_vgg_layers(config, VGG11_ENTRIES[: config.cut_layer], config.in_channels))
        self.bottleneck: nn.Module = nn.Identity()
        self.activation: nn.Module = nn.Identity()
        if config.bottleneck_channels is not None:
            self.bottleneck = nn.Conv2d(
                config.encoder_out_channels, config.bottleneck_channels, kernel_size=3, padding=1
            )
            self.activation = nn.Sigmoid()
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference gives the client Xavier-uniform weights and zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bottleneck(self.features(self.normalize(x))))


class SplitDecoder(nn.Module):
    """Cloud half: linear bottleneck expansion (identity without a bottleneck), VGG entries ``cut..12``, classifier.

    z: (B, *feature_shape) float -> logits (B, num_classes).
    """

    def __init__(self, config: SplitModelConfig) -> None:
        super().__init__()
        self.config = config
        cloud_in = config.encoder_out_channels
        self.expand: nn.Module = nn.Identity()
        if config.bottleneck_channels is not None:
            self.expand = nn.Conv2d(config.bottleneck_channels, cloud_in, kernel_size=3, padding=1)
        self.features = nn.Sequential(*_vgg_layers(config, VGG11_ENTRIES[config.cut_layer :], cloud_in))
        final_channels = int(config.channels(VGG11_ENTRIES[-2]))
        side = config.image_size
        for entry in VGG11_ENTRIES:
            if entry == "M":
                side //= 2
        hidden = max(8, round(512 * config.width))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(final_channels * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, config.num_classes),
        )

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
            dec.expand, *dec.features, nn.Flatten(1), *dec.classifier,
        )
