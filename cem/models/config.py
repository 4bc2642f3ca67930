"""``SplitModelConfig``: everything needed to rebuild either half of a split model, for any arch.

It is the manifest's ``model`` record, so its JSON keys never change: bundles
written before there was more than one arch load unchanged. Shapes that depend
on the backbone (``feature_shape``, ``encoder_out_channels``) are asked of the
arch's registry entry (``cem.models.archs``).

Two optional keys describe PATROL's edge (``training.patrol``): ``front_conv`` (an
extra conv on the edge) and ``edge_channels`` (the widths of the edge's prunable
channel groups after channel pruning). They are written only when set, so the
record of every other model, and every bundle written before they existed, is
unchanged; a reader that predates them builds the unpruned shape and the strict
weight load refuses the bundle loudly rather than running it wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cem.errors import ConfigError
from cem.models.archs import available_archs, get_arch


@dataclass(frozen=True)
class SplitModelConfig:
    """Everything needed to rebuild either half of a split model.

    ``cut_layer=None`` takes the arch's default cut (vgg11_bn_sgm 4, resnet20 5); a built
    config always holds the resolved int, which is what the manifest records. ``width``
    multiplies every channel count (and VGG's classifier size), so small configurations
    train in seconds on a CPU. ``bottleneck_channels=None`` removes the bottleneck
    (No_defense baseline; serialised as JSON ``null``).

    ``front_conv`` adds PATROL's extra conv in front of the edge trunk; ``edge_channels``
    are the output channels of the edge trunk's convs in order (the front conv excluded),
    as channel pruning left them (``None``: the arch's widths at ``width``); VGG11 counts
    each edge conv, ResNet-20 each edge block's inner width. Only archs that implement
    ``edge_widths`` accept either (both). The cloud keeps the unpruned width: the
    expansion conv maps back to ``decoder_in_channels``.
    """

    arch: str = "vgg11_bn_sgm"
    cut_layer: int | None = None
    bottleneck_channels: int | None = 8
    width: float = 1.0
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    front_conv: bool = False
    edge_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.arch not in available_archs():
            raise ConfigError(f"expected arch in {available_archs()}, got {self.arch!r}")
        object.__setattr__(self, "cut_layer", get_arch(self.arch).resolve_cut(self.cut_layer))
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
        self._check_edge_shape()

    def _check_edge_shape(self) -> None:
        """``front_conv``/``edge_channels`` only where the arch supports them; one positive count per trunk conv,
        the last equal to the cloud's width when there is no bottleneck to absorb the difference."""
        if self.edge_channels is not None:  # a list from a caller compares equal to the tuple from_dict reads
            object.__setattr__(self, "edge_channels", tuple(self.edge_channels))
        if not self.front_conv and self.edge_channels is None:
            return
        widths = get_arch(self.arch).edge_widths(self)  # refuses archs without PATROL support
        if self.edge_channels is None:
            return
        channels = self.edge_channels
        if len(channels) != len(widths) or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ConfigError(f"expected edge_channels of {len(widths)} positive ints (one per edge conv), "
                              f"got {channels!r}")
        if self.bottleneck_channels is None and self.encoder_out_channels != self.decoder_in_channels:
            raise ConfigError(f"expected the edge to end at the cloud's {self.decoder_in_channels} channels "
                              f"without a bottleneck, got {self.encoder_out_channels}")

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
            **({"front_conv": True} if self.front_conv else {}),
            **({"edge_channels": list(self.edge_channels)} if self.edge_channels is not None else {}),
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
                front_conv=_strict_bool(data.get("front_conv", False)),
                edge_channels=None if data.get("edge_channels") is None
                else tuple(int(v) for v in data["edge_channels"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"expected a complete model config, got {data!r} ({exc})") from exc

    def scaled(self, channels: int) -> int:
        """A channel count of the width-1 network at this config's ``width`` (at least one)."""
        return max(1, round(channels * self.width))

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensor the edge transmits."""
        channels, height, width = get_arch(self.arch).edge_output(self)
        return (channels if self.bottleneck_channels is None else self.bottleneck_channels, height, width)

    @property
    def has_bottleneck(self) -> bool:
        """False for the No_defense baseline: the edge sends the unbounded trunk output, not Sigmoid outputs."""
        return self.bottleneck_channels is not None

    @property
    def encoder_out_channels(self) -> int:
        """Channels of the edge trunk's output (after any pruning): the bottleneck conv's input."""
        return get_arch(self.arch).edge_output(self)[0]

    @property
    def decoder_in_channels(self) -> int:
        """Channels the cloud trunk takes, the expansion conv's output: the unpruned edge output width."""
        if self.edge_channels is None:
            return self.encoder_out_channels
        return get_arch(self.arch).edge_output(replace(self, edge_channels=None))[0]


def _strict_bool(value: object) -> bool:
    """A JSON boolean; anything else (``"false"``, 0) is refused rather than read by truthiness."""
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean front_conv, got {value!r}")
    return value


def _optional_int(value: object) -> int | None:
    """JSON ``null`` stays ``None`` (no bottleneck); anything else must be an integer."""
    return None if value is None else int(value)  # type: ignore[call-overload]
