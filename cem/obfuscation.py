"""Client-side feature obfuscation: what the edge does to z before it leaves the device.

Training, the edge client and the attacker all apply the same transform from
the same record in the bundle, so the decoder is trained on, served with, and
attacked on exactly the tensor that crosses the wire (the reference applied some
defenses to a tensor the server never consumed, reference_notes §3.6 / B14).

Order, as in the reference: Gaussian noise (σ is a standard deviation), then
feature dropout (no 1/(1-p) rescaling: applied identically in training and in
service), then per-sample top-k pruning (the smallest ``ratio`` of each sample's
values are zeroed; per sample rather than batch-global, fixing B17).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from cem.errors import ConfigError


@dataclass(frozen=True)
class ObfuscationConfig:
    noise_std: float = 0.0
    dropout_p: float = 0.0
    topk_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ConfigError(f"expected noise_std >= 0, got {self.noise_std}")
        if not 0 <= self.dropout_p < 1:
            raise ConfigError(f"expected dropout p in [0, 1), got {self.dropout_p}")
        if not 0 <= self.topk_ratio < 1:
            raise ConfigError(f"expected top-k prune ratio in [0, 1), got {self.topk_ratio}")

    @property
    def is_identity(self) -> bool:
        return self.noise_std == 0 and self.dropout_p == 0 and self.topk_ratio == 0

    @classmethod
    def from_records(cls, noise_std: float, defenses: Iterable[dict[str, Any]]) -> ObfuscationConfig:
        """Build from a manifest's ``noise_std`` and ``defenses`` list (other defenses are ignored here)."""
        dropout_p = 0.0
        topk_ratio = 0.0
        for record in defenses:
            if record.get("name") == "dropout":
                dropout_p = float(record["p"])
            elif record.get("name") == "topk":
                topk_ratio = float(record["ratio"])
        return cls(noise_std=float(noise_std), dropout_p=dropout_p, topk_ratio=topk_ratio)


def obfuscate(z: torch.Tensor, config: ObfuscationConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """z: (B, C, H, W) clean encoder output -> the tensor the decoder consumes. Differentiable in z."""
    out = z
    if config.noise_std > 0:
        out = out + config.noise_std * torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
    if config.dropout_p > 0:
        keep = torch.rand(out.shape, generator=generator, device=out.device) >= config.dropout_p
        out = out * keep.to(out.dtype)
    if config.topk_ratio > 0:
        flat = out.flatten(1)
        n_prune = int(flat.shape[1] * config.topk_ratio)
        if n_prune > 0:
            threshold = flat.detach().kthvalue(n_prune, dim=1, keepdim=True).values
            flat = flat * (flat.detach() > threshold).to(flat.dtype)
        out = flat.view_as(out)
    return out
