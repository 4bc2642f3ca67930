"""VGG11 with batch norm as a split backbone (``vgg11_bn_sgm``, reference_notes §1.1).

The 13 entries of VGG config "A" (convs and max-pools both count, as in the
reference's "Cutting_layer c/13"); cut ``c`` puts entries ``0..c-1`` on the edge.
Cut 4 (conv64, M, conv128, M: 8×8 features on 32-px images) is the reference's
split, which the paper calls "the first two convolutional layers". ``sgm`` names
the Sigmoid after the bottleneck, which ``cem.models.split`` adds for every arch.

PATROL (reference_notes §1.1, §4.6; ``training.patrol``): ``front_conv`` puts an extra
conv ``in_channels → 16`` + BN + ReLU in front of entry 0 (which then takes 16
channels), and ``edge_channels`` overrides the edge convs' output widths after
channel pruning. The cloud's entries keep the unpruned widths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from cem.models.archs import PruneGroup, SplitArch, register_arch
from cem.models.config import SplitModelConfig

if TYPE_CHECKING:
    from cem.models.split import SplitEncoder

VGG11_ENTRIES: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
CLASSIFIER_HIDDEN = 512
FRONT_CONV_CHANNELS = 16  # PATROL's extra edge conv (reference_notes §1.1)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


def _vgg_layers(
    config: SplitModelConfig, entries: tuple[int | str, ...], in_channels: int, widths: tuple[int, ...] | None = None
) -> list[nn.Module]:
    """Conv-BN-ReLU per int entry (at ``widths`` where given, one per conv, else scaled), max-pool per "M"."""
    layers: list[nn.Module] = []
    channels = in_channels
    convs = iter(widths if widths is not None else [config.scaled(int(e)) for e in entries if e != "M"])
    for entry in entries:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = next(convs)
        layers += _conv_bn_relu(channels, out)
        channels = out
    return layers


@register_arch("vgg11_bn_sgm")
class VGG11(SplitArch):
    """VGG11-BN; convs 3×3 with bias, BN before ReLU; the classifier of the reference (dropout, two hidden layers)."""

    default_cut = 4
    cuts = range(1, len(VGG11_ENTRIES))

    def edge_layers(self, config: SplitModelConfig) -> list[nn.Module]:
        front: list[nn.Module] = []
        channels = config.in_channels
        if config.front_conv:
            channels = config.scaled(FRONT_CONV_CHANNELS)
            front = _conv_bn_relu(config.in_channels, channels)
        edge = VGG11_ENTRIES[: self.resolve_cut(config.cut_layer)]
        return front + _vgg_layers(config, edge, channels, config.edge_channels)

    def cloud_layers(self, config: SplitModelConfig) -> list[nn.Module]:
        return _vgg_layers(config, VGG11_ENTRIES[self.resolve_cut(config.cut_layer) :], config.decoder_in_channels)

    def classifier(self, config: SplitModelConfig) -> nn.Module:
        final_channels = config.scaled(int(VGG11_ENTRIES[-2]))
        side = config.image_size // 2 ** VGG11_ENTRIES.count("M")
        hidden = max(8, round(CLASSIFIER_HIDDEN * config.width))
        return nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(final_channels * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, config.num_classes),
        )

    def edge_output(self, config: SplitModelConfig) -> tuple[int, int, int]:
        edge = VGG11_ENTRIES[: self.resolve_cut(config.cut_layer)]
        side = config.image_size // 2 ** edge.count("M")
        widths = config.edge_channels if config.edge_channels is not None else self.edge_widths(config)
        return (widths[-1], side, side)  # entry 0 is a conv, and every cut keeps it

    def edge_widths(self, config: SplitModelConfig) -> tuple[int, ...]:
        """One group per edge conv (the front conv excluded): its output channels."""
        edge = VGG11_ENTRIES[: self.resolve_cut(config.cut_layer)]
        return tuple(config.scaled(int(e)) for e in edge if e != "M")

    def prune_groups(self, encoder: SplitEncoder) -> list[PruneGroup]:
        """Each trunk conv with the BN after it, read by the next conv or the bottleneck conv; without
        a bottleneck the last conv's channels are the cloud's and stay whole."""
        convs = [m for m in encoder.features.modules() if isinstance(m, nn.Conv2d)]
        norms = [m for m in encoder.features.modules() if isinstance(m, nn.BatchNorm2d)]
        skip = 1 if encoder.config.front_conv else 0
        bottleneck = encoder.bottleneck if isinstance(encoder.bottleneck, nn.Conv2d) else None
        consumers = [*convs[skip + 1:], bottleneck]
        return [PruneGroup(conv, norm, consumer)
                for conv, norm, consumer in zip(convs[skip:], norms[skip:], consumers, strict=True)]

    def init_edge(self, encoder: nn.Module) -> None:
        """Xavier-uniform conv weights and zero biases, as the reference gives its client."""
        for module in encoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def init_cloud(self, decoder: nn.Module) -> None:
        """Nothing: the reference leaves the cloud convs and the classifier at PyTorch's defaults."""
