"""Audit one bundle: train an inversion attack and score it (the API the audit service calls).

``run_audit`` loads the bundle's encoder and client transform, computes the
attacker's features once, trains the chosen attack under both protocols
(``train`` and ``infer``, see ``attacker.attacks.data``) and scores each on images
it never trained on. Captured traffic, when given, is reconstructed as
intercepted (it already carries the client's noise) and scored wherever its
sample id names an image of the audited data set: test-split ids with the
``train``-protocol network, train-split ids with the ``infer``-protocol network,
so no captured image was ever in the scoring network's training data.

``AuditSpec.network_channels``/``network_blocks`` size the attacker's decoding
network (None: ``DecoderAttackConfig``'s, the paper's S.3 network; the GAN's
generator is pre-trained as that decoder); the result's ``details["network"]``
records the size used.

The bound is built by ``cem.bounds.privacy_bound`` from what the trainer recorded
in ``manifest.metrics``: ξ with its ``kind`` (``estimate`` or ``relative``, never
silently called a floor) and a check of every ξ against the mean-image guess and
against the lowest MSE this audit's attacks reached. The audit never invents a
bound; a bundle without one (σ = 0) reports ``null``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attacker.attacks import (
    MODES,
    AttackCancelled,
    DecoderAttackConfig,
    GridGroup,
    ProgressMonitor,
    build_attack_split,
    check_attack_name,
    compute_feature_set,
    evaluate_attack,
    iterate_reconstructions,
    load_images,
    render_grid_png,
    run_attack,
)
from attacker.attacks.evaluate import GRID_SAMPLES
from cem.bounds import privacy_bound
from cem.bundle import load_encoder
from cem.captures.reader import CapturedFeatures
from cem.data.sample_ids import parse_sample_id
from cem.devices import DEVICE_CHOICES, resolve_device
from cem.errors import CEMError, ConfigError
from cem.manifest import Manifest
from cem.metrics import ReconstructionMeter
from cem.obfuscation import ObfuscationConfig

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 100


@dataclass(frozen=True)
class AuditSpec:
    bundle_dir: Path
    attack: str = "decoder"
    dataset: str | None = None
    data_dir: Path | None = None
    epochs: int | None = None
    seed: int = 0
    device: str = "auto"
    network_channels: int | None = None  # the decoding network's width; None: DecoderAttackConfig's (paper S.3)
    network_blocks: int | None = None  # its residual blocks; None: DecoderAttackConfig's (paper S.3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle_dir", Path(self.bundle_dir))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        check_attack_name(self.attack)
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"expected epochs >= 1 or None, got {self.epochs}")
        for name, least in (("network_channels", 1), ("network_blocks", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(
                    f"expected {name} to be an integer >= {least} or None (the paper's decoding network),"
                    f" got {value!r}"
                )
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"expected device in {DEVICE_CHOICES}, got {self.device!r}")

    @property
    def decoder_config(self) -> DecoderAttackConfig:
        """The decoder attack's settings with this spec's network size (also the GAN generator's pre-training)."""
        default = DecoderAttackConfig()
        return dataclasses.replace(
            default,
            channels=default.channels if self.network_channels is None else self.network_channels,
            num_blocks=default.num_blocks if self.network_blocks is None else self.network_blocks,
        )


@dataclass
class AuditResult:
    attack: str
    metrics: dict[str, dict[str, float]]
    bound: dict[str, Any] | None
    reconstructions_png: bytes
    captured_reconstructions: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe summary (no PNG bytes)."""
        return {
            "attack": self.attack,
            "metrics": self.metrics,
            "bound": self.bound,
            "captured_reconstructions": self.captured_reconstructions,
            "details": self.details,
        }


class AuditCancelled(CEMError):
    """``should_stop`` returned True; the audit stopped without a result."""


def native_size_of(manifest: Manifest) -> int:
    """The side the bound's ``estimate`` kind measures MSE at (older bundles: the model's input side)."""
    return int(manifest.dataset.native_size or manifest.model.image_size)


def audited_bound(manifest: Manifest, metrics: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """``privacy_bound`` checked against the strongest (lowest-MSE) column this audit measured."""
    lowest = lambda key: min((m[key] for m in metrics.values() if key in m), default=None)  # noqa: E731
    return privacy_bound(manifest.metrics, attack_mse=lowest("mse"), attack_mse_native=lowest("mse_native"))


def _check_captured(captured: CapturedFeatures, feature_shape: tuple[int, int, int]) -> None:
    features = captured.features
    if tuple(features.shape[1:]) != tuple(feature_shape):
        raise ConfigError(
            f"expected captured features of shape (N, {', '.join(map(str, feature_shape))}) for this bundle, "
            f"got {tuple(features.shape)}"
        )
    if not features.is_floating_point() or not torch.isfinite(features).all():
        raise ConfigError("expected finite floating-point captured features, got non-finite or integer values")


def _ground_truth(sample_id: str | None, dataset: str, images: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(split, index) of the image a sample id names, or None when unknown for this data set."""
    if sample_id is None:
        return None
    try:
        parsed = parse_sample_id(sample_id)
    except ConfigError:
        return None
    if parsed.dataset != dataset or parsed.index >= images[parsed.split].shape[0]:
        return None
    return parsed.split, parsed.index


def _attack_captured(
    captured: CapturedFeatures, networks: dict[str, torch.nn.Module], dataset: str, images: dict[str, torch.Tensor],
    native_size: int,
) -> tuple[dict[str, float] | None, GridGroup, int]:
    """Reconstruct every capture; score those with ground truth.

    Returns (metrics or None, grid group, number of captures whose sample id names no image of this
    data set): such ids are skipped and counted, never allowed to fail the audit."""
    device = images["train"].device
    features = captured.features.to(device=device, dtype=torch.float32)
    truths = [_ground_truth(sid, dataset, images) for sid in captured.sample_ids]
    recon = torch.empty((features.shape[0], *images["train"].shape[1:]), device=device)
    # Train-split images are scored by the network that never saw the train split (and vice versa).
    uses_infer = torch.tensor([t is not None and t[0] == "train" for t in truths], device=device)
    for mode, mask in (("train", ~uses_infer), ("infer", uses_infer)):
        if mask.any():
            picked = mask.nonzero().squeeze(1)
            parts = [r for _, r in iterate_reconstructions(networks[mode], features[picked], None, seed=0)]
            recon[picked] = torch.cat(parts)
    originals = torch.full_like(recon, 0.5)
    known = torch.tensor([t is not None for t in truths], dtype=torch.bool)
    for i, truth in enumerate(truths):
        if truth is not None:
            originals[i] = images[truth[0]][truth[1]]
    metrics = None
    if known.any():
        meter = ReconstructionMeter(native_size)
        rows = known.nonzero().squeeze(1).to(device)
        meter.update(recon[rows], originals[rows])
        metrics = meter.summary()
    unusable = sum(
        1 for sid, truth in zip(captured.sample_ids, truths, strict=True) if sid is not None and truth is None
    )
    if unusable:
        logger.warning("skipped %d capture(s) whose sample id names no %s image", unusable, dataset)
    k = GRID_SAMPLES
    return metrics, GridGroup(originals[:k].cpu(), recon[:k].cpu(), known[:k]), unusable


def run_audit(
    spec: AuditSpec,
    *,
    captured: CapturedFeatures | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AuditResult:
    """Train ``spec.attack`` on the bundle's features under both protocols and score it.

    ``progress(fraction, message)`` is called at least once per batch; ``should_stop()`` is
    polled once per batch and, when True, ``AuditCancelled`` is raised.
    """
    monitor = ProgressMonitor(progress, should_stop)
    try:
        return _run_audit(spec, captured, monitor)
    except AttackCancelled as exc:
        raise AuditCancelled(f"audit of {spec.bundle_dir} was cancelled") from exc


def _run_audit(spec: AuditSpec, captured: CapturedFeatures | None, monitor: ProgressMonitor) -> AuditResult:
    monitor.report(0.0, "loading bundle and data")
    device = resolve_device(spec.device)
    manifest, encoder = load_encoder(spec.bundle_dir, device)
    if captured is not None and captured.features.shape[0] == 0:
        captured = None
    if captured is not None:
        _check_captured(captured, manifest.feature_shape)
    obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    dataset = spec.dataset or manifest.dataset.name
    if not dataset:
        raise ConfigError("expected a dataset name in the spec or the bundle manifest, got neither")
    images = {split: load_images(dataset, split, spec.data_dir) for split in ("train", "test")}
    expected = (manifest.model.in_channels, manifest.model.image_size, manifest.model.image_size)
    for split_name, tensor in images.items():
        if tuple(tensor.shape[1:]) != expected:
            raise ConfigError(
                f"expected {dataset} {split_name} images of shape {expected} for this bundle,"
                f" got {tuple(tensor.shape[1:])}"
            )
    monitor.check()
    sets = {split: compute_feature_set(encoder, tensor) for split, tensor in images.items()}
    images = {split: s.images for split, s in sets.items()}
    splits = {mode: build_attack_split(mode, sets["train"], sets["test"], seed=spec.seed) for mode in MODES}
    total_fit = sum(len(s.fit) for s in splits.values())
    start, span = 0.02, 0.96
    networks: dict[str, torch.nn.Module] = {}
    metrics: dict[str, dict[str, float]] = {}
    groups: list[GridGroup] = []
    decoder_config = spec.decoder_config
    details: dict[str, Any] = {}
    used: dict[str, int] = {}
    for mode, split in splits.items():
        share = span * len(split.fit) / total_fit
        trained = run_attack(
            spec.attack, split, obfuscation, epochs=spec.epochs, seed=spec.seed, monitor=monitor.child(start, share),
            decoder_config=decoder_config,
        )
        start += share
        used = {"channels": trained.network.config.channels, "blocks": trained.network.config.num_blocks}
        evaluation = evaluate_attack(trained.network, split.eval, obfuscation, seed=spec.seed + EVAL_SEED_OFFSET,
                                     native_size=native_size_of(manifest))
        networks[mode], metrics[mode] = trained.network, evaluation.metrics
        groups.append(GridGroup(evaluation.originals, evaluation.reconstructions))
        details[mode] = {
            "fit": len(split.fit),
            "val": len(split.val),
            "eval": len(split.eval),
            "epochs": len(trained.history),
            "best_epoch": trained.best_epoch,
            "still_improving": trained.still_improving(),
            "doubling_gain": None if trained.half_budget is None else trained.half_budget.gain,
            "val_mse": [row.get("val_mse") for row in trained.history],  # per epoch: judge convergence yourself
        }
        logger.info(
            "%s attack, %s column: mse %.5f psnr %.2f ssim %.4f on %d images", spec.attack, mode,
            evaluation.metrics["mse"], evaluation.metrics["psnr"], evaluation.metrics["ssim"], len(split.eval),
        )
    n_captured = 0
    if captured is not None:
        monitor.report(0.98, "reconstructing captured features")
        captured_metrics, group, unusable_ids = _attack_captured(captured, networks, dataset, images,
                                                                 native_size_of(manifest))
        details["captured_unusable_ids"] = unusable_ids
        n_captured = int(captured.features.shape[0])
        if captured_metrics is not None:
            metrics["captured"] = captured_metrics
        groups.append(group)
    bound = audited_bound(manifest, metrics)
    if bound is None:
        logger.warning(
            "bundle %s records no entropy bound (trained without noise); the bound is null", manifest.model_id
        )
    else:
        for warning in bound["warnings"]:
            logger.warning("bundle %s: %s", manifest.model_id, warning)
    details.update(
        model_id=manifest.model_id,
        dataset=dataset,
        noise_std=manifest.noise_std,
        defenses=manifest.defenses,
        seed=spec.seed,
        device=str(device),
        network=used,  # the size of the attacker's decoding network (and the GAN's generator)
        captured_known=int(metrics.get("captured", {}).get("n", 0)),
    )
    monitor.report(1.0, "done")
    return AuditResult(spec.attack, metrics, bound, render_grid_png(groups), n_captured, details)
