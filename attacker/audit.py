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
records the size used. ``AuditSpec.min_steps`` raises that decoder's epochs until
its run takes at least that many optimizer steps (None: ``DecoderAttackConfig``'s,
no minimum; attacker.attacks.decoder), recorded in ``details["min_steps"]``; each
column's ``epochs`` detail is what it ran.

The bound is built by ``cem.bounds.privacy_bound`` from what the trainer recorded
in ``manifest.metrics``: ξ with its ``kind`` (``estimate`` or ``relative``, never
silently called a floor) and a check of every ξ against the mean-image guess and
against the lowest MSE this audit's attacks reached. The audit never invents a
bound; a bundle without one (σ = 0) reports ``null``.

Data-parallel (``distributed``, under ``cem-attack --nproc N`` or torchrun; never in the
audit service, whose workers are single processes): every rank loads the bundle and the
data, builds the same splits and trains the attack together (attacker.attacks.parallel);
rank 0 alone trains the identity classifier, scores, renders the grid and checks the
bound, the others taking part only in an optimisation attack's inversions of the scored
images; every rank returns rank 0's result. Captured traffic is refused there (only the
service passes it). ``details["distributed"]`` records the world size and backend.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attacker.attack_names import NETWORK_ATTACKS, OPTIMIZING_ATTACKS, AttackName
from attacker.attacks import (
    MODES,
    AttackCancelled,
    DecoderAttackConfig,
    FeatureMatchingInverter,
    FeatureSet,
    GridGroup,
    OptimizeAttackConfig,
    ProgressMonitor,
    TrainedAttack,
    build_attack_split,
    check_attack_name,
    compute_feature_set,
    evaluate_attack,
    evaluation_classifier,
    iterate_reconstructions,
    load_labeled_images,
    render_grid_png,
    run_attack,
)
from attacker.attacks.evaluate import GRID_SAMPLES
from cem.bounds import privacy_bound
from cem.bundle import load_encoder
from cem.captures.reader import CapturedFeatures
from cem.data.sample_ids import parse_sample_id
from cem.devices import DEVICE_CHOICES, resolve_device
from cem.distributed import SINGLE_PROCESS, DistributedContext, broadcast_object, rank_device
from cem.errors import CEMError, ConfigError
from cem.manifest import Manifest
from cem.metrics import ReconstructionMeter
from cem.models import InversionNetwork
from cem.obfuscation import ObfuscationConfig
from cem.worst_case import worst_case

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
    optimize_steps: int | None = None  # the optimisation attacks' steps per image; None: OptimizeAttackConfig's
    min_steps: int | None = None  # the decoder's least optimizer steps; None: DecoderAttackConfig's

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle_dir", Path(self.bundle_dir))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        check_attack_name(self.attack)
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"expected epochs >= 1 or None, got {self.epochs}")
        if self.attack == AttackName.OPTIMIZE and self.epochs is not None:
            raise ConfigError(f"expected no epochs for the optimize attack (its budget is optimize_steps), "
                              f"got {self.epochs}")
        if self.attack not in NETWORK_ATTACKS and (self.network_channels, self.network_blocks) != (None, None):
            raise ConfigError("expected no network_channels or network_blocks for the optimize attack (it learns no "
                              f"decoding network), got {self.network_channels} and {self.network_blocks}")
        if self.attack not in NETWORK_ATTACKS and self.min_steps is not None:
            raise ConfigError(f"expected no min_steps for the optimize attack (it trains no decoding network), "
                              f"got {self.min_steps}")
        if self.optimize_steps is not None and self.attack not in OPTIMIZING_ATTACKS:
            raise ConfigError(f"expected optimize_steps only with the optimize or decoder+optimize attack, "
                              f"got it with {self.attack}")
        for name, least in (("network_channels", 1), ("network_blocks", 0), ("optimize_steps", 1), ("min_steps", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"expected {name} to be an integer >= {least} or None (the attack's default), "
                                  f"got {value!r}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"expected device in {DEVICE_CHOICES}, got {self.device!r}")

    @property
    def optimize_config(self) -> OptimizeAttackConfig:
        """The optimisation attacks' settings with this spec's step budget."""
        default = OptimizeAttackConfig()
        return default if self.optimize_steps is None else dataclasses.replace(default, steps=self.optimize_steps)

    @property
    def decoder_config(self) -> DecoderAttackConfig:
        """The decoder attack's settings with this spec's network size and least steps (also the GAN generator's
        pre-training and decoder+optimize's decoder)."""
        default = DecoderAttackConfig()
        return dataclasses.replace(
            default,
            channels=default.channels if self.network_channels is None else self.network_channels,
            num_blocks=default.num_blocks if self.network_blocks is None else self.network_blocks,
            min_steps=default.min_steps if self.min_steps is None else self.min_steps,
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


def _network_size(trained: TrainedAttack) -> dict[str, int] | None:
    """Channels and blocks of the decoding network an attack learned (the hybrid's: the one it started from)."""
    network = trained.started_from.network if trained.started_from is not None else trained.network
    if not isinstance(network, InversionNetwork):
        return None
    return {"channels": network.config.channels, "blocks": network.config.num_blocks}


def native_size_of(manifest: Manifest) -> int:
    """The side the bound's ``estimate`` kind measures MSE at (older bundles: the model's input side)."""
    return int(manifest.dataset.native_size or manifest.model.image_size)


def audited_bound(manifest: Manifest, metrics: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """``privacy_bound`` checked against the strongest (lowest-MSE) column this audit measured. A column whose MSE
    is not finite (a diverged attack) is left out: ``min`` with a NaN is NaN whatever the other columns hold, and
    the bound would then be checked against nothing."""

    def lowest(key: str) -> float | None:
        return min((m[key] for m in metrics.values() if m.get(key) is not None and math.isfinite(m[key])),
                   default=None)

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
    distributed: DistributedContext = SINGLE_PROCESS,
) -> AuditResult:
    """Train ``spec.attack`` on the bundle's features under both protocols and score it.

    ``progress(fraction, message)`` is called at least once per batch; ``should_stop()`` is
    polled once per batch and, when True, ``AuditCancelled`` is raised. ``distributed``: the
    process group's context when every rank of a launcher calls this (module docstring); on CUDA
    rank r uses ``cuda:LOCAL_RANK``. Every rank returns rank 0's result.
    """
    monitor = ProgressMonitor(progress, should_stop)
    try:
        return _run_audit(spec, captured, monitor, distributed)
    except AttackCancelled as exc:
        raise AuditCancelled(f"audit of {spec.bundle_dir} was cancelled") from exc


def _take_part_in_scoring(network: torch.nn.Module, data: FeatureSet, obfuscation: ObfuscationConfig, *,
                          seed: int) -> None:
    """What a rank other than 0 does while rank 0 scores (``evaluate_attack``): an optimisation attack inverts
    the scored images split over the ranks, so this rank makes the same inverter calls on the same batches
    and drops the results; a learned network needs nothing from it."""
    if isinstance(network, FeatureMatchingInverter):
        for _ in iterate_reconstructions(network, data.features, obfuscation, seed=seed):
            pass


def _run_audit(spec: AuditSpec, captured: CapturedFeatures | None, monitor: ProgressMonitor,
               distributed: DistributedContext) -> AuditResult:
    monitor.report(0.0, "loading bundle and data")
    device = resolve_device(spec.device)
    if distributed.enabled:
        device = rank_device(device, distributed.local_rank)
    manifest, encoder = load_encoder(spec.bundle_dir, device)
    if captured is not None and captured.features.shape[0] == 0:
        captured = None
    if captured is not None and distributed.enabled:
        raise ConfigError(f"expected no captured features in a data-parallel audit (the audit service, which "
                          f"passes them, runs each audit in one process), got {captured.features.shape[0]} "
                          f"with {distributed.world_size} processes")
    if captured is not None:
        _check_captured(captured, manifest.feature_shape)
    obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    dataset = spec.dataset or manifest.dataset.name
    if not dataset:
        raise ConfigError("expected a dataset name in the spec or the bundle manifest, got neither")
    labelled = {split: load_labeled_images(dataset, split, spec.data_dir) for split in ("train", "test")}
    images = {split: pair[0] for split, pair in labelled.items()}
    expected = (manifest.model.in_channels, manifest.model.image_size, manifest.model.image_size)
    for split_name, tensor in images.items():
        if tuple(tensor.shape[1:]) != expected:
            raise ConfigError(
                f"expected {dataset} {split_name} images of shape {expected} for this bundle,"
                f" got {tuple(tensor.shape[1:])}"
            )
    monitor.check()
    sets = {split: compute_feature_set(encoder, tensor, labelled[split][1]) for split, tensor in images.items()}
    images = {split: s.images for split, s in sets.items()}
    splits = {mode: build_attack_split(mode, sets["train"], sets["test"], seed=spec.seed) for mode in MODES}
    total_fit = sum(len(s.fit) for s in splits.values())
    start, span = 0.02, 0.96
    networks: dict[str, torch.nn.Module] = {}
    metrics: dict[str, dict[str, float]] = {}
    groups: list[GridGroup] = []
    decoder_config = spec.decoder_config
    details: dict[str, Any] = {}
    used: dict[str, int] | None = None
    optimizes = spec.attack in OPTIMIZING_ATTACKS
    # the audited data set's classes (it may differ from the bundle's; only the image shape must match)
    num_classes = max([manifest.model.num_classes, *(int(s.labels.max()) + 1 for s in sets.values()
                                                     if s.labels is not None and len(s))])
    main = distributed.is_main
    for mode, split in splits.items():
        share = span * len(split.fit) / total_fit
        # the evaluation classifier takes a few seconds; an optimisation attack then spends as long scoring
        # (one optimisation per scored image) as choosing τ
        classifier_share = 0.05 * share
        attack_share = (share - classifier_share) / (2 if optimizes else 1)
        classifier = evaluation_classifier(split.fit, split.val, num_classes, seed=spec.seed,
                                           monitor=monitor.child(start, classifier_share)) if main else None
        started = time.perf_counter()
        trained = run_attack(
            spec.attack, split, obfuscation, epochs=spec.epochs, seed=spec.seed,
            monitor=monitor.child(start + classifier_share, attack_share), decoder_config=decoder_config,
            encoder=encoder, optimize_config=spec.optimize_config, distributed=distributed,
        )
        attack_s = time.perf_counter() - started
        if isinstance(trained.network, FeatureMatchingInverter):
            trained.network.track(monitor.child(start + classifier_share + attack_share, attack_share),
                                  len(split.eval))
        start += share
        if classifier is None:  # not rank 0: scoring is rank 0's
            _take_part_in_scoring(trained.network, split.eval, obfuscation, seed=spec.seed + EVAL_SEED_OFFSET)
            continue
        used = _network_size(trained)
        evaluation = evaluate_attack(trained.network, split.eval, obfuscation, seed=spec.seed + EVAL_SEED_OFFSET,
                                     native_size=native_size_of(manifest), classifier=classifier)
        networks[mode], metrics[mode] = trained.network, evaluation.metrics
        groups.append(GridGroup(evaluation.originals, evaluation.reconstructions))
        details[mode] = {
            "fit": len(split.fit),
            "val": len(split.val),
            "eval": len(split.eval),
            "epochs": trained.extra.get("steps", len(trained.history)),  # optimisation attacks: steps per image
            "best_epoch": trained.best_epoch,
            "still_improving": trained.still_improving(),
            "doubling_gain": None if trained.half_budget is None else trained.half_budget.gain,
            "resumed_epochs": trained.resumed_epochs,  # trained by an earlier, interrupted run: attack_s excludes them
            "pretraining_cached": trained.pretraining_cached,  # likewise the GAN's decoder pre-training
            "val_mse": [row.get("val_mse") for row in trained.history],  # per epoch: judge convergence yourself
            "classifier_val_accuracy": classifier.val_accuracy,
            "attack_s": round(attack_s, 3),
            "eval_s": round(time.perf_counter() - started - attack_s, 3),
            **({"optimize": trained.extra} if trained.extra else {}),
        }
        if trained.started_from is not None:  # the hybrid: what the decoder alone scored, so the gain is visible
            decoder = trained.started_from
            alone = evaluate_attack(decoder.network, split.eval, obfuscation, seed=spec.seed + EVAL_SEED_OFFSET,
                                    native_size=native_size_of(manifest), classifier=classifier)
            details[mode]["decoder_alone"] = {
                **{k: alone.metrics.get(k) for k in ("mse", "mse_native", "psnr", "ssim", "attack_accuracy")},
                "epochs": len(decoder.history), "best_epoch": decoder.best_epoch,
                "still_improving": decoder.still_improving()}
        logger.info(
            "%s attack, %s column: mse %.5f psnr %.2f ssim %.4f on %d images", spec.attack, mode,
            evaluation.metrics["mse"], evaluation.metrics["psnr"], evaluation.metrics["ssim"], len(split.eval),
        )
    if not main:
        return broadcast_object(None, distributed)  # type: ignore[return-value]  # rank 0's is never None
    n_captured = 0
    if captured is not None:
        monitor.report(0.98, "reconstructing captured features")
        for network in networks.values():  # an optimisation over the captures: cancellable, no progress range
            if isinstance(network, FeatureMatchingInverter):
                network.track(ProgressMonitor(should_stop=monitor.should_stop), captured.features.shape[0])
        captured_metrics, group, unusable_ids = _attack_captured(captured, networks, dataset, images,
                                                                 native_size_of(manifest))
        details["captured_unusable_ids"] = unusable_ids
        n_captured = int(captured.features.shape[0])
        if captured_metrics is not None:
            metrics["captured"] = captured_metrics
        groups.append(group)
    scored = {spec.attack: {mode: m["mse"] for mode, m in metrics.items()}}
    if all("decoder_alone" in details.get(mode, {}) for mode in MODES):  # the hybrid ran the decoder too
        scored["decoder"] = {mode: details[mode]["decoder_alone"]["mse"] for mode in MODES}
    details["worst_case"] = worst_case(scored)
    # the bound is checked against every attack this audit scored: the hybrid's decoder alone included
    decoder_alone = {f"{mode} (decoder alone)": details[mode]["decoder_alone"] for mode in MODES
                     if "decoder_alone" in details.get(mode, {})}
    bound = audited_bound(manifest, {**metrics, **decoder_alone})
    if bound is None:
        logger.warning(
            "bundle %s records no entropy bound (trained without noise, or by a version that recorded none); "
            "the bound is null", manifest.model_id
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
        network=used,  # the size of the attacker's decoding network (the GAN's generator, the hybrid's start); None:
        # the optimize attack has none
        min_steps=decoder_config.min_steps if spec.attack in NETWORK_ATTACKS else None,  # its decoder's; None: none
        captured_known=int(metrics.get("captured", {}).get("n", 0)),
        distributed=distributed.to_dict(),
    )
    monitor.report(1.0, "done")
    result = AuditResult(spec.attack, metrics, bound, render_grid_png(groups), n_captured, details)
    return broadcast_object(result, distributed)
