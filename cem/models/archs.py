"""The registry of split architectures: how each backbone is cut into an edge and a cloud trunk.

A manifest names its architecture (``model.arch``); everything that rebuilds a model
(training, the edge, the cloud, the attacker) goes through ``cem.models.split``, which
asks this registry for the arch's layers. So adding an architecture is one module
with one ``@register_arch`` class, and no consumer learns its name.

An arch provides only the backbone: the layers before the cut, the layers after it and
the classifier. What happens *at* the cut (normalisation in front, the bottleneck conv
and its Sigmoid, the cloud's expansion conv) is the same for every arch and lives in
``cem.models.split``, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from cem.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from cem.models.config import SplitModelConfig
    from cem.models.split import SplitEncoder


@dataclass(frozen=True, eq=False)
class PruneGroup:
    """One set of edge channels PATROL's pruning may remove: the output channels of ``conv``, the BN
    that normalises them (``norm``) and the conv that reads them (``consumer``, its input channels).
    ``consumer=None``: the cloud reads these channels, so they are never pruned."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d | None
    consumer: nn.Conv2d | None


class SplitArch(ABC):
    """One backbone, cut after entry ``cut - 1`` of its ordered list of entries.

    ``cuts`` are the supported cut values (at least one entry on each side);
    ``default_cut`` is the paper's split for this backbone.
    """

    name: ClassVar[str]
    default_cut: ClassVar[int]
    cuts: ClassVar[range]

    def resolve_cut(self, cut: int | None) -> int:
        """``cut``, or this arch's default where it is None; refused unless it is one of ``cuts``."""
        resolved = self.default_cut if cut is None else cut
        if resolved not in self.cuts:
            raise ConfigError(
                f"expected cut_layer in {self.cuts.start}..{self.cuts.stop - 1} for arch {self.name!r}, got {cut}"
            )
        return resolved

    @abstractmethod
    def edge_layers(self, config: SplitModelConfig) -> list[nn.Module]:
        """Entries ``0..cut-1``, taking (B, in_channels, S, S) normalised images."""

    @abstractmethod
    def cloud_layers(self, config: SplitModelConfig) -> list[nn.Module]:
        """Entries ``cut..`` and any pooling, taking the edge trunk's output shape; their output is flattened."""

    @abstractmethod
    def classifier(self, config: SplitModelConfig) -> nn.Module:
        """The head on the flattened cloud trunk output -> (B, num_classes) logits."""

    @abstractmethod
    def edge_output(self, config: SplitModelConfig) -> tuple[int, int, int]:
        """(C, H, W) of the edge trunk's output, before any bottleneck."""

    @abstractmethod
    def edge_widths(self, config: SplitModelConfig) -> tuple[int, ...]:
        """Unpruned widths of the edge's prunable channel groups at ``config.width``, in order: what
        ``config.edge_channels`` overrides for PATROL (one count per ``prune_groups`` entry)."""

    @abstractmethod
    def prune_groups(self, encoder: SplitEncoder) -> list[PruneGroup]:
        """The channel groups of a built ``SplitEncoder``, in the order of ``edge_widths``."""

    @abstractmethod
    def init_edge(self, encoder: nn.Module) -> None:
        """Initialise the whole edge half (bottleneck conv included) as the reference does."""

    @abstractmethod
    def init_cloud(self, decoder: nn.Module) -> None:
        """Initialise the whole cloud half (expansion conv included) as the reference does."""


_ARCHS: dict[str, SplitArch] = {}


def register_arch(name: str) -> Callable[[type[SplitArch]], type[SplitArch]]:
    """Class decorator: makes the arch available to ``SplitModelConfig(arch=name)`` and ``--arch``."""

    def decorate(cls: type[SplitArch]) -> type[SplitArch]:
        cls.name = name
        _ARCHS[name] = cls()
        return cls

    return decorate


def available_archs() -> list[str]:
    return sorted(_ARCHS)


def get_arch(name: str) -> SplitArch:
    if name not in _ARCHS:
        raise UnknownNameError(f"expected arch in {available_archs()}, got {name!r}")
    return _ARCHS[name]
