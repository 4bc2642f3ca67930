"""Split classifiers (one registry of backbones, ``cem.models.archs``) and the inversion networks that attack them."""

from cem.models import split_resnet, split_vgg  # noqa: F401  (registers the archs)
from cem.models.archs import SplitArch, available_archs, get_arch, register_arch
from cem.models.config import SplitModelConfig
from cem.models.inversion import CriticConfig, InversionConfig, InversionNetwork, WassersteinCritic
from cem.models.split import SplitDecoder, SplitEncoder, SplitModel

__all__ = [
    "CriticConfig",
    "InversionConfig",
    "InversionNetwork",
    "SplitArch",
    "SplitDecoder",
    "SplitEncoder",
    "SplitModel",
    "SplitModelConfig",
    "WassersteinCritic",
    "available_archs",
    "get_arch",
    "register_arch",
]
