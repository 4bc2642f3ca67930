"""The cloud half of the model: manifest + decoder, and nothing that could load the encoder.

This module is the only place the cloud touches model weights, and it calls
``cem.bundle.load_decoder`` alone; the service runs from a bundle folder whose
``encoder.safetensors`` has been removed (tests check that).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cem.bundle import load_decoder
from cem.devices import resolve_device
from cem.manifest import Manifest

logger = logging.getLogger(__name__)


class DecoderRuntime:
    """Runs the verified decoder on batches of features.

    features: (B, C, H, W) float32 on the CPU, B >= 1 -> logits (B, num_classes) float32 on the CPU.
    """

    def __init__(self, bundle_dir: str | Path, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.manifest: Manifest
        self.manifest, self._decoder = load_decoder(bundle_dir, self.device)
        logger.info(
            "loaded decoder of model %s (%s, cut %d, features %s) on %s",
            self.manifest.model_id, self.manifest.model.arch, self.manifest.model.cut_layer,
            self.manifest.feature_shape, self.device,
        )

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return self.manifest.feature_shape

    @torch.inference_mode()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        logits = self._decoder(features.to(self.device, non_blocking=True))
        return logits.float().cpu()

    def warm_up(
        self, run: Callable[[torch.Tensor], object] | None = None, batch_sizes: tuple[int, ...] = (1, 8)
    ) -> float:
        """Push blank features through ``run`` (default: ``predict``) once per batch size; returns seconds taken.

        The server passes its micro-batcher, so the whole serving path runs once:
        lazy initialisation (the allocator, kernels, the CUDA context) happens
        here, not in the first client's request.
        """
        run = run or self.predict
        start = time.perf_counter()
        for size in batch_sizes:
            run(torch.full((size, *self.feature_shape), 0.5))
        elapsed = time.perf_counter() - start
        logger.info("warm-up inference done in %.3f s", elapsed)
        return elapsed
