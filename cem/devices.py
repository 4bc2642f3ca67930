"""``--device auto|cpu|cuda`` resolved in one place."""

from __future__ import annotations

import torch

from cem.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"expected device in {DEVICE_CHOICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("expected a CUDA device for --device cuda, but torch sees none")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
