"""Split classifiers and the inversion networks that attack them."""

from cem.models.split_vgg import SplitDecoder, SplitEncoder, SplitModel, SplitModelConfig

__all__ = ["SplitDecoder", "SplitEncoder", "SplitModel", "SplitModelConfig"]
