"""The untrained digits-shaped bundle the service benchmarks serve.

What they measure (latency, memory, restarts, hostile bytes) does not depend on
the weights, so a seeded, untrained ``SplitModel`` saves the minutes training
would take. Imported by scripts run from ``benchmarks/`` (their folder is on
``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cem.bundle import save_bundle
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig


def write_untrained_digits_bundle(out: Path, *, note: str, width: float = 0.25, noise_std: float = 0.1) -> Path:
    """Save a seeded, untrained digits model at ``out`` (``note`` lands in the manifest's training record)."""
    _, info = load_dataset("digits", split="train")
    torch.manual_seed(0)
    config = SplitModelConfig(in_channels=1, num_classes=10, width=width, mean=info.mean, std=info.std)
    save_bundle(out, SplitModel(config).eval(), noise_std=noise_std, dataset=info.to_dict(), training={"note": note})
    return out
