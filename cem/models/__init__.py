"""Split classifiers and the inversion networks that attack them."""

from cem.models.inversion import CriticConfig, InversionConfig, InversionNetwork, WassersteinCritic
from cem.models.split_vgg import SplitDecoder, SplitEncoder, SplitModel, SplitModelConfig

__all__ = [
    "CriticConfig",
    "InversionConfig",
    "InversionNetwork",
    "SplitDecoder",
    "SplitEncoder",
    "SplitModel",
    "SplitModelConfig",
    "WassersteinCritic",
]
