"""ResNet-20 as a split backbone (``resnet20``): the reference's variant, used for TinyImageNet.

This is the network of the reference's ``resnet_cifar.py`` (reference_notes §1.2), **not**
He et al.'s CIFAR ResNet-20 (3×3 stem, stages of 16/32/64 channels, the first at stride 1):

* stem: a 5×5 conv ``in_channels → 16`` (stride 1, no bias), BN, ReLU;
* three stages of three basic blocks, 32, 64 and 128 channels, **every** stage starting
  at stride 2 (the first too), so a 64-px TinyImageNet image ends at 8×8;
* basic block: conv3×3 (stride s, no bias), BN, ReLU, conv3×3, BN, plus the shortcut,
  then ReLU; the shortcut is option A (subsample, then zero channels), parameter-free;
* head: global average pool, Linear(128 → classes).

Why this variant: the paper's TinyImageNet numbers were produced with it, and the
geometry every later stage assumes (8×16×16 features at cut 5 on 64-px images, the
16 → 64 inversion network) is its geometry. The standard ResNet-20 would send
8×32×32 features at the same cut, with a different share of the compute on the edge.

The 10 entries are ``[stem, s1b1, s1b2, s1b3, s2b1, …, s3b3]``; cut ``c`` (1..9) puts the
first ``c`` on the edge. The default, **cut 5** (stem, stage 1 and the first block of
stage 2: 64 channels at 16×16, 112,472 encoder parameters with the 8-channel
bottleneck at width 1), is the reference code's split: its GAN attack builds
``ResNet20(5, …)`` and its attack decoder expects 16×16 features. The paper's text says
"the first four convolutional layers" (cut 2, 8×32×32), which nothing in the code
matches; ``--cut-layer`` chooses either.

PATROL (reference_notes §1.2, §4.6; ``training.patrol``): ``front_conv`` puts the reference's
extra conv 16 → 16 (3×3, no bias, and, as there, no BN or ReLU) right after the stem, and
``edge_channels`` sets the inner width of each edge block (conv1's outputs, conv2's inputs)
after channel pruning. Only those inner channels are pruned: a block's output is added to
its shortcut, so its width is tied to the next block's and to the cloud's, and stays whole.

The reference's own ``forward`` pooled with ``avg_pool2d(·, 8)``, right only for an 8×8
final map; its training loop used adaptive pooling, as here, which serves any input size.
Initialisation as the reference: He-normal conv weights, std sqrt(2 / (k·k·out)), on both
halves (bottleneck and expansion convs included); BN and the Linear keep PyTorch's defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cem.models.archs import PruneGroup, SplitArch, register_arch
from cem.models.config import SplitModelConfig

if TYPE_CHECKING:
    from cem.models.split import SplitEncoder

STEM_CHANNELS = 16
STAGE_CHANNELS = (32, 64, 128)
BLOCKS_PER_STAGE = 3
ENTRIES = 1 + len(STAGE_CHANNELS) * BLOCKS_PER_STAGE  # the stem and nine blocks


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel (an average pool of kernel 1), then append zero
    channels up to ``out_channels``. (B, in, H, W) -> (B, out, ⌈H/stride⌉, ⌈W/stride⌉)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=1, stride=stride)
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(self.pool(x), (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """conv3×3 (stride) - BN - ReLU - conv3×3 - BN, plus the shortcut, then ReLU.

    (B, in, H, W) -> (B, out, ⌈H/stride⌉, ⌈W/stride⌉). ``inner_channels`` (default ``out_channels``)
    is the width between the two convs, which PATROL's pruning narrows.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, inner_channels: int | None = None) -> None:
        super().__init__()
        inner = out_channels if inner_channels is None else inner_channels
        self.conv1 = nn.Conv2d(in_channels, inner, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def _entry_plan(config: SplitModelConfig) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of each of the 10 entries, at the config's width."""
    plan = [(config.in_channels, config.scaled(STEM_CHANNELS), 1)]
    for channels in STAGE_CHANNELS:
        for block in range(BLOCKS_PER_STAGE):
            plan.append((plan[-1][1], config.scaled(channels), 2 if block == 0 else 1))
    return plan


def _entries(config: SplitModelConfig, start: int, stop: int, inner: dict[int, int] | None = None) -> list[nn.Module]:
    """Entries ``start..stop-1``, in order; ``inner`` maps a block's entry index to its inner width."""
    entries: list[nn.Module] = []
    for index, (cin, cout, stride) in enumerate(_entry_plan(config)[start:stop], start=start):
        if index == 0:
            entries.append(nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=5, padding=2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            ))
        else:
            entries.append(BasicBlock(cin, cout, stride, (inner or {}).get(index)))
    return entries


def _he_normal_convs(module: nn.Module) -> None:
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / (k·k·out))


@register_arch("resnet20")
class ResNet20(SplitArch):
    """The reference's ResNet-20 (see the module docstring), cut after entry ``cut - 1`` of 10."""

    default_cut = 5
    cuts = range(1, ENTRIES)

    def edge_layers(self, config: SplitModelConfig) -> list[nn.Module]:
        cut = self.resolve_cut(config.cut_layer)
        inner = dict(zip(range(1, cut), config.edge_channels, strict=True)) if config.edge_channels else None
        layers = _entries(config, 0, cut, inner)
        if config.front_conv:
            stem = config.scaled(STEM_CHANNELS)
            layers.insert(1, nn.Conv2d(stem, stem, kernel_size=3, padding=1, bias=False))
        return layers

    def cloud_layers(self, config: SplitModelConfig) -> list[nn.Module]:
        return [*_entries(config, self.resolve_cut(config.cut_layer), ENTRIES), nn.AdaptiveAvgPool2d(1)]

    def classifier(self, config: SplitModelConfig) -> nn.Module:
        return nn.Linear(config.scaled(STAGE_CHANNELS[-1]), config.num_classes)

    def edge_output(self, config: SplitModelConfig) -> tuple[int, int, int]:
        plan = _entry_plan(config)[: self.resolve_cut(config.cut_layer)]
        side = config.image_size
        for _, _, stride in plan:
            side = -(-side // stride)  # a 3×3 conv with padding 1 and the kernel-1 pool both give ⌈side/stride⌉
        return (plan[-1][1], side, side)

    def edge_widths(self, config: SplitModelConfig) -> tuple[int, ...]:
        """One group per edge block: its inner width (unpruned: the block's output width)."""
        return tuple(cout for _, cout, _ in _entry_plan(config)[1 : self.resolve_cut(config.cut_layer)])

    def prune_groups(self, encoder: SplitEncoder) -> list[PruneGroup]:
        """Each edge block's conv1 and bn1, read by its conv2."""
        return [PruneGroup(block.conv1, block.bn1, block.conv2)
                for block in encoder.features if isinstance(block, BasicBlock)]

    def init_edge(self, encoder: nn.Module) -> None:
        _he_normal_convs(encoder)

    def init_cloud(self, decoder: nn.Module) -> None:
        _he_normal_convs(decoder)
