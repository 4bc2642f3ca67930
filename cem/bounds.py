"""What a reported "bound" is: its kind, its label, and whether the attacks contradict it.

Theorem 1 turns a lower bound on H(x|z) into ξ, a lower bound on the per-value MSE
of any reconstruction. H(x|z) ≥ H(x) − I(x; z) (Eq. 3) needs H(x), which is
intractable, so every ξ this project computes is one of these kinds
(``BOUND_KINDS``):

* ``floor``: provably holds. No ξ computed here qualifies (no provable lower bound
  on H(x) of natural images is available); the kind exists so a proven value, if
  one is ever added, is never confused with the other two.
* ``estimate``: H(x) replaced by the Gaussian entropy of the dequantised data at
  their native resolution (``cem.entropy.PixelMoments``). A Gaussian maximises
  entropy for a given covariance, so this over-estimates H(x) and ξ may exceed the
  true floor; it is on the MSE scale of images average-pooled to that resolution.
* ``relative``: H(x) := 0 nats (the paper's "relative" H(x|z)). It orders models
  trained on one data set; it is not an MSE floor at all.

``privacy_bound`` assembles what the audit API, ``cem-attack --json``, the HTML
report and the demo show, and checks every ξ against the mean-image guess
(Tr Cov(x)/d) and against what the attacks actually achieved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from cem.entropy import PixelMoments, mse_lower_bound, relative_conditional_entropy
from cem.manifest import MetricsRecord

BOUND_KINDS = ("floor", "estimate", "relative")
BOUND_LABELS = {
    "floor": "ξ floor: proven to hold for every attacker's per-pixel MSE (no value here has this kind)",
    "estimate": "ξ estimate: Theorem 1 with H(x) estimated as a Gaussian on dequantised native-resolution "
                "pixels; an estimate of the MSE floor that can exceed the true floor, not a guarantee",
    "relative": "ξ relative: Theorem 1 with H(x) := 0 nats; orders models trained on one data set, "
                "not a floor on any attacker's MSE",
}
ESTIMATE_ASSUMPTION = (
    "H(x) ≈ ½ log det(2πe(Σ + Δ²/12·I)) of the training images average-pooled to their native resolution, "
    "Δ the quantisation step; a Gaussian over-estimates H(x), so this ξ can exceed the true floor"
)


def native_view(images: torch.Tensor, native_size: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, C·n·n): images average-pooled to the native side n (identity when n = S)."""
    if images.shape[-1] != native_size:
        images = F.adaptive_avg_pool2d(images, native_size)
    return images.flatten(1)


def data_statistics(
    moments_model: PixelMoments, moments_native: PixelMoments, quantisation_step: float
) -> dict[str, float]:
    """The numbers a trainer stores so that any later reader can build ``privacy_bound``."""
    return {
        "entropy_x_estimate": moments_native.gaussian_entropy(quantisation_step),
        "mean_image_mse": moments_model.mean_image_mse(),
        "mean_image_mse_native": moments_native.mean_image_mse(),
    }


def training_bound_metrics(information_bound: float, native_dim: int, stats: dict[str, float]) -> dict[str, float]:
    """Manifest metrics (``MetricsRecord.to_dict`` form) for the estimated ξ (d = native) and its inputs."""
    entropy_estimate = relative_conditional_entropy(information_bound, stats["entropy_x_estimate"])  # Eq. 3
    estimate = MetricsRecord(entropy_bound_estimate=entropy_estimate,
                             xi_estimate=mse_lower_bound(entropy_estimate, native_dim), native_dim=float(native_dim))
    return {**estimate.to_dict(), **stats}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value))
    return None


def privacy_bound(
    metrics: MetricsRecord | Mapping[str, Any],
    *,
    attack_mse: float | None = None,
    attack_mse_native: float | None = None,
) -> dict[str, Any] | None:
    """The bound of a bundle's manifest ``metrics``, labelled and checked; None when it records none.

    ``metrics``: the manifest's record, or its JSON object. ``attack_mse``/``attack_mse_native``:
    the lowest MSE an attack reached (at the model's and at the native resolution), to say when
    a "bound" exceeds what an attacker achieved. The headline (``kind``, ``xi``,
    ``entropy_bound``) is the estimate when the bundle has one, else the relative value; the
    other is kept under ``relative``.
    """
    if not isinstance(metrics, MetricsRecord):
        metrics = MetricsRecord.from_dict(metrics)
    xi_relative, entropy_relative = _finite(metrics.xi_relative), _finite(metrics.entropy_bound)
    if xi_relative is None or entropy_relative is None:
        return None
    relative = {"kind": "relative", "xi": xi_relative, "entropy_bound": entropy_relative,
                "label": BOUND_LABELS["relative"]}
    warnings = _check(relative, _finite(metrics.mean_image_mse), attack_mse, "model-resolution")
    xi_estimate = _finite(metrics.xi_estimate)
    if xi_estimate is None:
        return {**relative, "warnings": warnings}
    estimate = {
        "kind": "estimate", "xi": xi_estimate, "entropy_bound": _finite(metrics.entropy_bound_estimate),
        "entropy_x": _finite(metrics.entropy_x_estimate), "dimension": int(metrics.native_dim or 0),
        "assumption": ESTIMATE_ASSUMPTION, "label": BOUND_LABELS["estimate"],
    }
    warnings += _check(estimate, _finite(metrics.mean_image_mse_native), attack_mse_native, "native-resolution")
    return {**estimate, "relative": relative, "warnings": warnings}


def _check(bound: dict[str, Any], mean_image: float | None, attack: float | None, scale: str) -> list[str]:
    """Plain-language warnings where a ξ exceeds the trivial guess or a measured attack MSE."""
    xi, kind, warnings = bound["xi"], bound["kind"], []
    bound["mean_image_mse"] = mean_image
    bound["exceeds_mean_image"] = mean_image is not None and xi > mean_image
    bound["attack_mse"] = attack
    bound["exceeds_attack"] = attack is not None and xi > attack
    if bound["exceeds_mean_image"]:
        warnings.append(f"the {kind} ξ = {xi:.3g} exceeds the {scale} MSE of the mean-image guess "
                        f"({mean_image:.3g}): it cannot be a lower bound on reconstruction error")
    if bound["exceeds_attack"]:
        warnings.append(f"the {kind} ξ = {xi:.3g} exceeds the {scale} MSE an attack achieved ({attack:.3g}): "
                        "attackers do better than this number, so it is not a floor")
    return warnings


def stored_bound(bound: dict[str, Any] | None) -> dict[str, Any] | None:
    """A bound as stored by any version: results written before bounds had a kind carry only
    {"xi", "entropy_bound"} with H(x) := 0, so they are ``relative``."""
    if not bound or "kind" in bound:
        return bound or None
    xi = _number(bound, "xi")
    if xi is None:
        return None
    return {"kind": "relative", "xi": xi, "entropy_bound": _number(bound, "entropy_bound"),
            "label": BOUND_LABELS["relative"], "warnings": []}
