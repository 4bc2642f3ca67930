"""Joint training of a split classifier with defenses and CEM, written out as a bundle.

Shape of torchvision's ``references/``: the loops live in ``training.loops``
(``train_one_epoch``, ``evaluate``), and ``train`` drives them. Per epoch: one
pass of SGD on L_task (+ defense losses) + λ·s(lr)·L_C with a single backward,
the mixture refit on that epoch's cached features (no extra forward pass), the
test accuracy with the client transform on, and one JSON line in
``<out>/train_log.jsonl``. At the end: the final accuracy (noise and every
client transform on), the entropy bound of the eval-mode features, the bundle.

Under ``torchrun`` (``cem.distributed``, ``training.distributed``, ``training.data_parallel``) every rank
runs the same loop on its shard of each epoch; rank 0 alone evaluates (on the full
test split, with the single-process noise seeds), computes the final bound, logs,
shows progress and writes the bundle, whose manifest records the world size and
backend; ``train`` returns rank 0's result on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from cem.bounds import data_statistics, native_view, training_bound_metrics
from cem.bundle import save_bundle
from cem.data import DatasetInfo, load_dataset
from cem.data.validation import carve_validation, describe_carve
from cem.devices import resolve_device
from cem.distributed import DistributedContext, broadcast_object, process_group
from cem.entropy import PixelMoments
from cem.errors import ConfigError
from cem.manifest import Manifest, MetricsRecord
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig
from training.cem_plugin import CEMRegularizer
from training.config import LR_DECAY, TrainConfig, profile_for, resolve_config
from training.data_parallel import check_data_parallel, per_process_batch, refit_shared, shard_sampler, wrap_step
from training.defenses import DefenseStack, ResSFLDefense, create_defense, parse_defense
from training.loops import FeatureCache, SplitStep, collect_features, evaluate, train_one_epoch
from training.patrol import carry_optimizer_state
from training.ressfl import ProxyAdversary, ProxySetup

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
FIELD_DEFENSES = {"noise": "--noise-std", "bottleneck": "--bottleneck"}
ENTROPY_CONVENTION = (
    "entropy_bound, mse_bound_xi: kind 'relative', H(x) := 0 nats, entropy_bound = -information_bound; "
    "*_estimate: kind 'estimate', H(x) = entropy_x_estimate (see cem.bounds)"
)


@dataclass
class TrainResult:
    """What a finished run produced: the bundle on disk and its headline numbers."""

    accuracy: float
    model_id: str
    bundle: Path
    manifest: Manifest
    history: list[dict[str, Any]]
    duration_s: float

    @property
    def metrics(self) -> MetricsRecord:
        return self.manifest.metrics

    def to_dict(self) -> dict[str, Any]:
        """The ``cem-train --json`` object; ξ keeps its manifest key (``mse_bound_xi`` = ``metrics.xi_relative``)."""
        cem = self.manifest.cem
        return {
            "accuracy": self.accuracy,
            "val_accuracy": self.metrics.val_accuracy,
            "model_id": self.model_id,
            "bundle": str(self.bundle),
            "entropy_bound": self.metrics.entropy_bound,
            "mse_bound_xi": self.metrics.xi_relative,
            "noise_std": self.manifest.noise_std,
            "defenses": self.manifest.defenses,
            "cem_lambda": cem.lam if cem is not None else 0.0,
            "cem_lambda_units": cem.units if cem is not None else None,
            "epochs": len(self.history),
            "duration_s": round(self.duration_s, 3),
        }


def build_defenses(config: TrainConfig) -> DefenseStack:
    """``--noise-std`` and ``--bottleneck`` become defenses, followed by the ``--defense`` specs.

    A ResSFL (or PATROL) threshold left unset takes the data set's value here, so the manifest records the
    number used; PATROL's pruning settings depend on the model and are filled in by ``_prepare``.
    """
    parsed = [parse_defense(spec) for spec in config.defenses]
    for defense in parsed:
        if defense.name in FIELD_DEFENSES:
            flag = FIELD_DEFENSES[defense.name]
            raise ConfigError(f"expected {defense.name} to be set with {flag}, got --defense {defense.name}:...")
    threshold = profile_for(config.dataset).ressfl_ssim_threshold
    parsed = [dataclasses.replace(d, ssim_threshold=threshold)
              if isinstance(d, ResSFLDefense) and d.ssim_threshold is None else d for d in parsed]  # patrol's too
    fixed = [create_defense("bottleneck", channels=config.bottleneck)]
    noise_std = config.noise_std  # unset: the default resolve_config decides (σ = 0 without a bottleneck)
    if noise_std is None:
        noise_std = resolve_config(config).noise_std or 0.0
    if noise_std > 0:
        fixed.insert(0, create_defense("noise", std=noise_std))
    return DefenseStack(tuple(fixed + parsed))


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class _Run:
    """Everything one training run holds, built once by ``_prepare``."""

    config: TrainConfig
    device: torch.device
    info: DatasetInfo
    train_set: Dataset
    model: SplitModel
    defenses: DefenseStack
    obfuscation: ObfuscationConfig
    cem: CEMRegularizer | None
    train_loader: DataLoader
    test_loader: DataLoader
    val_loader: DataLoader | None
    distributed: DistributedContext
    step: nn.Module  # SplitStep(model), wrapped in DDP when several processes train
    train_sampler: DistributedSampler | None  # this rank's shard; None on one process (the loader shuffles)

    @property
    def image_dim(self) -> int:
        return self.info.in_channels * self.info.image_size**2

    def accuracy(self) -> float:
        """Test accuracy with every client transform on; the same seeded noise every call."""
        return evaluate(
            self.model, self.test_loader, self.obfuscation, _seeded(self.config.seed + 3, self.device), self.device
        )

    def val_accuracy(self) -> dict[str, float]:
        """{"val_accuracy": ...} on the carved validation split (same protocol as ``accuracy``), or {}."""
        if self.val_loader is None:
            return {}
        generator = _seeded(self.config.seed + 6, self.device)
        return {"val_accuracy": evaluate(self.model, self.val_loader, self.obfuscation, generator, self.device)}


def _prepare(config: TrainConfig, distributed: DistributedContext, device: torch.device) -> _Run:
    if config.arch is None or config.width is None or config.cem is None:  # train() resolves the config first
        raise ConfigError("expected a config filled by resolve_config, got arch, width or cem unset")
    torch.manual_seed(config.seed)
    data_args: dict[str, Any] = {"data_dir": config.data_dir, "download": config.download}
    train_set, info = load_dataset(config.dataset, "train", augment=bool(config.augment), **data_args)
    test_set, _ = load_dataset(config.dataset, "test", **data_args)
    val_set = None
    if config.validation_fraction > 0:
        fit_idx, val_idx = carve_validation(config.dataset, len(train_set), config.validation_fraction)  # type: ignore[arg-type]
        plain, _ = load_dataset(config.dataset, "train", **data_args)
        train_set, val_set = Subset(train_set, fit_idx.tolist()), Subset(plain, val_idx.tolist())
    defenses = build_defenses(config)
    check_data_parallel(config.batch_size, defenses, distributed.world_size)
    model_config = defenses.configure_model(SplitModelConfig(
        arch=config.arch, cut_layer=config.cut_layer, bottleneck_channels=config.bottleneck,
        width=float(config.width), in_channels=info.in_channels, image_size=info.image_size,
        num_classes=info.num_classes, mean=info.mean, std=info.std,
    ))
    defenses = defenses.resolved(int(config.epochs or 0), model_config)
    obfuscation = defenses.obfuscation()
    cem = None
    if obfuscation.noise_std > 0:  # the bound needs Σ_p = σ²I; with λ = 0 it is still reported
        cem = CEMRegularizer(
            config.cem,
            noise_std=obfuscation.noise_std,
            num_classes=info.num_classes,
            dataset_size=len(train_set),  # type: ignore[arg-type]  # map-style data sets are Sized
            image_dim=info.in_channels * info.image_size**2,  # d of Theorem 1
        )
    model = SplitModel(model_config).to(device)
    if distributed.rank > 0:  # DDP gives every rank rank 0's weights; the dropout masks should differ
        torch.manual_seed(distributed.seed(config.seed))
    loader_args: dict[str, Any] = {
        "batch_size": config.batch_size, "num_workers": config.workers, "pin_memory": device.type == "cuda"
    }
    sampler = shard_sampler(train_set, distributed, config.seed)
    train_loader = DataLoader(
        train_set, shuffle=True, generator=torch.Generator().manual_seed(config.seed), **loader_args
    ) if sampler is None else DataLoader(
        train_set, sampler=sampler, **{**loader_args, "batch_size": per_process_batch(config.batch_size, distributed)}
    )
    return _Run(
        config=config,
        device=device,
        info=info,
        train_set=train_set,
        model=model,
        defenses=defenses,
        obfuscation=obfuscation,
        cem=cem,
        train_loader=train_loader,
        test_loader=DataLoader(test_set, shuffle=False, **loader_args),
        val_loader=DataLoader(val_set, shuffle=False, **loader_args) if val_set is not None else None,
        distributed=distributed,
        step=wrap_step(SplitStep(model, obfuscation), distributed),
        train_sampler=sampler,
    )


def _pretrained_adversaries(run: _Run) -> list[ProxyAdversary]:
    """The stack's training-only adversaries (ResSFL's proxy), pre-trained on the initial encoder's
    transmitted features of the training split, with their own noise generator."""
    setup = ProxySetup(
        feature_shape=run.model.config.feature_shape, image_channels=run.info.in_channels,
        image_size=run.info.image_size, obfuscation=run.obfuscation,
        milestones=tuple(run.config.milestones()), device=run.device,
    )
    adversaries = run.defenses.create_adversaries(setup)
    for adversary in adversaries:
        adversary.pretrain(run.model.encoder, run.train_loader, _seeded(run.config.seed + 7, run.device),
                           show_progress=run.config.progress)
    return adversaries


def _create_optimizer(run: _Run) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD over the model's current parameters and its lr schedule."""
    config = run.config
    optimizer = torch.optim.SGD(run.model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.milestones(), gamma=LR_DECAY)


def _run_epochs(run: _Run, log_path: Path) -> list[dict[str, Any]]:
    """Train every epoch; on rank 0 also evaluate and log -> rank 0's per-epoch records ([] on other ranks)."""
    config, cem, main = run.config, run.cem, run.distributed.is_main
    optimizer, scheduler = _create_optimizer(run)
    # The noise differs per rank (rank 0 keeps seed + 1); the mixture generator is shared, so every rank fits alike.
    noise_gen = _seeded(run.distributed.seed(config.seed + 1), run.device)
    mixture_gen = _seeded(config.seed + 2, run.device)
    cache = FeatureCache(len(run.train_set)) if cem is not None else None  # type: ignore[arg-type]
    adversaries = _pretrained_adversaries(run)
    history: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "w")) if main else None
        bar = stack.enter_context(tqdm(total=config.epochs, desc="train", unit="epoch",
                                       disable=not (config.progress and main)))
        for epoch in range(1, int(config.epochs or 0) + 1):
            if run.train_sampler is not None:
                run.train_sampler.set_epoch(epoch)  # a new shared permutation each epoch
            if run.defenses.before_epoch(run.model, epoch):  # new Parameters (PATROL's pruning): a new optimiser
                rebuilt, rescheduled = _create_optimizer(run)  # holding them, or they never change again (B10)
                carry_optimizer_state(optimizer, scheduler, rebuilt, rescheduled)
                optimizer, scheduler = rebuilt, rescheduled
            lr = optimizer.param_groups[0]["lr"]
            weight = cem.weight(lr) if cem is not None and cem.active(epoch) else 0.0
            started, started_cpu = time.perf_counter(), time.process_time()
            if cache is not None:
                cache.clear()
            stats = train_one_epoch(run.model, run.train_loader, optimizer, obfuscation=run.obfuscation,
                                    defenses=run.defenses, cem=cem, cem_weight=weight, generator=noise_gen,
                                    device=run.device, cache=cache, adversaries=adversaries, step=run.step,
                                    distributed=run.distributed)
            bound = {} if cem is None or cache is None else refit_shared(cem, cache, mixture_gen, run.distributed)
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
            scheduler.step()
            for adversary in adversaries:
                adversary.end_epoch()
            if log is None:  # not rank 0: nothing to evaluate, log or show
                continue
            record = {"epoch": epoch, "lr": lr, "cem_weight": weight, **stats, "test_accuracy": run.accuracy(),
                      **run.val_accuracy(), **bound, "epoch_seconds": round(seconds, 4),
                      "epoch_cpu_seconds": round(cpu_seconds, 4)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            history.append(record)
            logger.info("epoch %d: %s", epoch, record)
            bar.set_postfix(acc=f"{record['test_accuracy']:.3f}", loss=f"{stats['train_loss']:.3f}")
            bar.update(1)
    return history


def _final_bound(run: _Run) -> dict[str, float]:
    """Entropy bound of the eval-mode features of the whole training split (what the edge emits)."""
    if run.cem is None:
        return {}
    config = run.config
    noise = ObfuscationConfig(noise_std=run.obfuscation.noise_std) if run.cem.config.evaluate_on == "noisy" else None
    plain, _ = load_dataset(config.dataset, "train", data_dir=config.data_dir, download=config.download)
    if config.validation_fraction > 0:  # the mixture describes the images the model was trained on
        fit_idx = carve_validation(config.dataset, len(plain), config.validation_fraction)[0]  # type: ignore[arg-type]
        plain = Subset(plain, fit_idx.tolist())
    loader = DataLoader(plain, batch_size=config.batch_size, shuffle=False, num_workers=config.workers)
    at_model, at_native = PixelMoments(covariance=False), PixelMoments()  # only the native entropy needs Σ
    native = run.info.native_resolution

    def observe(images: torch.Tensor) -> None:
        at_model.update(images.flatten(1))
        at_native.update(native_view(images, native))

    features, labels = collect_features(run.model, loader, noise, _seeded(config.seed + 4, run.device), run.device,
                                        on_images=observe)
    bound = run.cem.refit(features, labels, generator=_seeded(config.seed + 5, run.device))
    stats = data_statistics(at_model, at_native, run.info.quantisation_step)
    native_dim = run.info.in_channels * native**2
    return {**bound, **training_bound_metrics(bound["information_bound"], native_dim, stats)}


def train(config: TrainConfig) -> TrainResult:
    """Train, evaluate with the client transform on, and write the bundle to ``config.out_dir``.

    Under torchrun every rank calls this; rank 0 writes, and all return rank 0's result.
    """
    config = resolve_config(config)
    started, started_cpu = time.perf_counter(), time.process_time()
    with process_group(resolve_device(config.device)) as (distributed, device):
        run = _prepare(config, distributed, device)
        out = Path(config.out_dir)
        if distributed.is_main:
            out.mkdir(parents=True, exist_ok=True)
            logger.info("training %s: %s, defenses %s, cem %s, processes %d (%s)", config.dataset,
                        run.model.config.to_dict(), run.defenses.records(), config.cem, distributed.world_size,
                        distributed.backend or "no process group")
        history = _run_epochs(run, out / LOG_FILE)
        result = _finish(run, history, out, started, started_cpu) if distributed.is_main else None
        return broadcast_object(result, distributed)  # type: ignore[return-value]  # rank 0's is never None


def _finish(run: _Run, history: list[dict[str, Any]], out: Path, started: float, started_cpu: float) -> TrainResult:
    """Rank 0's end of a run: final accuracy and bound, the bundle."""
    config = run.config
    accuracy = run.accuracy()
    metrics = {"accuracy": accuracy, "train_accuracy": history[-1]["train_accuracy"], **run.val_accuracy(),
               **_final_bound(run)}
    duration, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    cem_config = config.cem
    manifest = save_bundle(
        out, run.model.cpu(), noise_std=run.obfuscation.noise_std, dataset=run.info.to_dict(),
        defenses=run.defenses.records(), metrics=metrics,
        cem={**cem_config.to_dict(), "noise_std": run.obfuscation.noise_std, "image_dim": run.image_dim}
        if cem_config is not None and cem_config.lam else None,
        training={
            "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr, "momentum": config.momentum,
            "weight_decay": config.weight_decay, "milestones": config.milestones(), "lr_decay": LR_DECAY,
            "seed": config.seed, "device": str(run.device), "augment": config.augment, "width": config.width,
            "validation": {"fraction": config.validation_fraction, **describe_carve(config.dataset),
                           "size": len(run.val_loader.dataset)} if run.val_loader is not None else None,  # type: ignore[arg-type]
            "distributed": {**run.distributed.to_dict(),
                            "batch_size_per_process": per_process_batch(config.batch_size, run.distributed)},
            "duration_s": round(duration, 3), "cpu_s": round(cpu_seconds, 3), "torch": torch.__version__,
            "log_file": LOG_FILE, "entropy_convention": ENTROPY_CONVENTION,
        },
    )
    logger.info("wrote bundle %s (model %s, accuracy %.4f)", out, manifest.model_id, accuracy)
    return TrainResult(accuracy=accuracy, model_id=manifest.model_id, bundle=out, manifest=manifest,
                       history=history, duration_s=duration)
