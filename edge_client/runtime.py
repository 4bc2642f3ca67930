"""The edge half of the model: manifest + encoder + the bundle's obfuscation, nothing else.

This module is the only place the edge touches model weights, and it calls
``cem.bundle.load_encoder`` alone; the edge runs from a bundle folder whose
``decoder.safetensors`` has been removed (tests check that). The noise σ and
the other client-side defenses come from the manifest and are applied here,
on the device, before anything is serialised (``cem.obfuscation.obfuscate``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cem.bundle import load_encoder
from cem.devices import resolve_device
from cem.manifest import Manifest
from cem.obfuscation import ObfuscationConfig, obfuscate

logger = logging.getLogger(__name__)


class EncoderRuntime:
    """images (B, C, S, S) float in [0, 1] -> features (B, *feature_shape) float32 on the CPU, obfuscated."""

    def __init__(self, bundle_dir: str | Path, device: str = "cpu", seed: int | None = None) -> None:
        self.device = resolve_device(device)
        self.manifest: Manifest
        self.manifest, self._encoder = load_encoder(bundle_dir, self.device)
        self.obfuscation = ObfuscationConfig.from_records(self.manifest.noise_std, self.manifest.defenses)
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        logger.info(
            "loaded encoder of model %s on %s (noise σ=%g, dropout p=%g, top-k ratio=%g)",
            self.manifest.model_id, self.device, self.obfuscation.noise_std,
            self.obfuscation.dropout_p, self.obfuscation.topk_ratio,
        )

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self._encoder(images.to(self.device))  # (B, C, H, W) in (0, 1); >= 0, unbounded without a bottleneck
        return obfuscate(z, self.obfuscation, generator=self._generator).float().cpu()
