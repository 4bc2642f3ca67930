"""Joint training of a split classifier with defenses and CEM, written out as a bundle.

Shape of torchvision's ``references/``: ``train_one_epoch``, ``evaluate`` and a
driver (``train``) that the CLI and scripts call. Per epoch: one pass of SGD on
L_task (+ defense losses) + λ·s(lr)·L_C with a single backward, the mixture refit
on that epoch's cached features (no extra forward pass), the test accuracy with
the client transform on, and one JSON line in ``<out>/train_log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from cem.bundle import Manifest, save_bundle
from cem.data import load_dataset
from cem.devices import resolve_device
from cem.errors import ConfigError
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig, obfuscate
from training.cem_plugin import CEMRegularizer
from training.config import LR_DECAY, TrainConfig, resolve_config
from training.defenses import DefenseStack, create_defense, parse_defense

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
FIELD_DEFENSES = ("noise", "bottleneck")


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
    def metrics(self) -> dict[str, Any]:
        return self.manifest.metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "model_id": self.model_id,
            "bundle": str(self.bundle),
            "entropy_bound": self.metrics.get("entropy_bound"),
            "mse_bound_xi": self.metrics.get("mse_bound_xi"),
            "noise_std": self.manifest.noise_std,
            "defenses": self.manifest.defenses,
            "cem_lambda": (self.manifest.cem or {}).get("lam", 0.0),
            "epochs": len(self.history),
            "duration_s": round(self.duration_s, 3),
        }


class FeatureCache:
    """One epoch of detached features and labels, for the mixture refit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.size = 0

    def add(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        flat = z.detach().flatten(1)
        if self.features is None:
            self.features = flat.new_empty((self.capacity, flat.shape[1]))
            self.labels = labels.new_empty((self.capacity,))
        end = self.size + flat.shape[0]
        self.features[self.size : end] = flat
        self.labels[self.size : end] = labels
        self.size = end

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is None or self.labels is None:
            raise ConfigError("expected at least one cached batch, got none")
        return self.features[: self.size], self.labels[: self.size]

    def clear(self) -> None:
        self.size = 0


def split_obfuscation(config: ObfuscationConfig) -> tuple[ObfuscationConfig, ObfuscationConfig]:
    """(noise only, everything after the noise): applying both in turn equals ``obfuscate(z, config)``."""
    return ObfuscationConfig(noise_std=config.noise_std), dataclasses.replace(config, noise_std=0.0)


def train_one_epoch(
    model: SplitModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    obfuscation: ObfuscationConfig,
    defenses: DefenseStack,
    cem: CEMRegularizer | None,
    cem_weight: float,
    generator: torch.Generator,
    device: torch.device,
    cache: FeatureCache | None = None,
) -> dict[str, float]:
    """One SGD pass. L_C is evaluated on the clean or noisy z as ``cem.config.evaluate_on`` says."""
    model.train()
    noise_only, after_noise = split_obfuscation(obfuscation)
    on_noisy = cem is not None and cem.config.evaluate_on == "noisy"
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # task loss, L_C, correct, samples (no host sync per batch)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        z = model.encoder(x)  # (B, C, H, W) in (0, 1)
        noisy = obfuscate(z, noise_only, generator)
        logits = model.decoder(obfuscate(noisy, after_noise, generator))
        loss = F.cross_entropy(logits, y)
        total = loss
        defense_loss = defenses.loss(x, z)
        if defense_loss is not None:
            total = total + defense_loss
        cem_z = noisy if on_noisy else z
        cem_loss = torch.zeros((), device=device)
        if cem is not None and cem_weight > 0:
            cem_loss = cem.loss(cem_z, y)
            total = total + cem_weight * cem_loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if cache is not None:
            cache.add(cem_z, y)
        batch = float(y.shape[0])
        totals[0] += loss.detach().double() * batch
        totals[1] += cem_loss.detach().double()
        totals[2] += (logits.detach().argmax(1) == y).sum().double()
        totals[3] += batch
    n_batches = max(len(loader), 1)
    totals = totals.cpu()
    return {
        "train_loss": float(totals[0] / totals[3]),
        "cem_loss": float(totals[1] / n_batches),
        "train_accuracy": float(totals[2] / totals[3]),
    }


@torch.no_grad()
def evaluate(
    model: SplitModel, loader: DataLoader, obfuscation: ObfuscationConfig, generator: torch.Generator, device: torch.device
) -> float:
    """Accuracy with the client transform (noise, dropout, top-k) applied, as in service."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model.decoder(obfuscate(model.encoder(x), obfuscation, generator))
        correct += int((logits.argmax(1) == y).sum())
        seen += y.shape[0]
    return correct / max(seen, 1)


@torch.no_grad()
def collect_features(
    model: SplitModel, loader: DataLoader, noise: ObfuscationConfig | None, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode features of a whole split: (N, D) (noisy when ``noise`` is given) and labels (N,)."""
    model.eval()
    cache = FeatureCache(len(loader.dataset))  # type: ignore[arg-type]
    for x, y in loader:
        z = model.encoder(x.to(device))
        cache.add(obfuscate(z, noise, generator) if noise is not None else z, y.to(device))
    return cache.tensors()


def build_defenses(config: TrainConfig) -> DefenseStack:
    """``--noise-std`` and ``--bottleneck`` become defenses, followed by the ``--defense`` specs."""
    parsed = [parse_defense(spec) for spec in config.defenses]
    for defense in parsed:
        if defense.name in FIELD_DEFENSES:
            flag = "--noise-std" if defense.name == "noise" else "--bottleneck"
            raise ConfigError(f"expected {defense.name} to be set with {flag}, got --defense {defense.name}:...")
    fixed = [create_defense("bottleneck", channels=config.bottleneck)]
    if config.noise_std > 0:
        fixed.insert(0, create_defense("noise", std=config.noise_std))
    return DefenseStack(tuple(fixed + parsed))


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def train(config: TrainConfig) -> TrainResult:
    """Train, evaluate with the client transform on, and write the bundle to ``config.out_dir``."""
    config = resolve_config(config)
    device = resolve_device(config.device)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    data_args = {"data_dir": config.data_dir, "download": config.download, "seed": config.seed}
    train_set, info = load_dataset(config.dataset, "train", augment=bool(config.augment), **data_args)
    test_set, _ = load_dataset(config.dataset, "test", **data_args)
    defenses = build_defenses(config)
    model_config = defenses.configure_model(SplitModelConfig(
        arch=config.arch, cut_layer=config.cut_layer, bottleneck_channels=config.bottleneck,
        width=float(config.width), in_channels=info.in_channels, image_size=info.image_size,
        num_classes=info.num_classes, mean=info.mean, std=info.std,
    ))
    model = SplitModel(model_config).to(device)
    obfuscation = defenses.obfuscation()
    image_dim = info.in_channels * info.image_size**2
    cem = None
    if obfuscation.noise_std > 0:
        cem = CEMRegularizer(config.cem, noise_std=obfuscation.noise_std, num_classes=info.num_classes,
                             dataset_size=len(train_set), image_dim=image_dim)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    milestones = config.milestones()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=LR_DECAY)
    loader_args = {"batch_size": config.batch_size, "num_workers": config.workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_set, shuffle=True, generator=torch.Generator().manual_seed(config.seed), **loader_args)
    test_loader = DataLoader(test_set, shuffle=False, **loader_args)
    noise_gen, mixture_gen = _seeded(config.seed + 1, device), _seeded(config.seed + 2, device)
    cache = FeatureCache(len(train_set)) if cem is not None else None
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    logger.info("training %s: %s, defenses %s, cem %s", config.dataset, model_config.to_dict(), defenses.records(), config.cem)
    with open(out / LOG_FILE, "w") as log, tqdm(total=config.epochs, desc="train", unit="epoch", disable=not config.progress) as bar:
        for epoch in range(1, int(config.epochs) + 1):
            lr = optimizer.param_groups[0]["lr"]
            weight = cem.weight(lr) if cem is not None and cem.active(epoch) else 0.0
            if cache is not None:
                cache.clear()
            epoch_start = time.perf_counter()
            stats = train_one_epoch(model, train_loader, optimizer, obfuscation=obfuscation, defenses=defenses,
                                    cem=cem, cem_weight=weight, generator=noise_gen, device=device, cache=cache)
            bound = cem.refit(*cache.tensors(), generator=mixture_gen) if cem is not None and cache is not None else {}
            seconds = time.perf_counter() - epoch_start
            accuracy = evaluate(model, test_loader, obfuscation, _seeded(config.seed + 3, device), device)
            scheduler.step()
            record = {"epoch": epoch, "lr": lr, "cem_weight": weight, **stats, "test_accuracy": accuracy,
                      **bound, "epoch_seconds": round(seconds, 4)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            history.append(record)
            logger.info("epoch %d: %s", epoch, record)
            bar.set_postfix(acc=f"{accuracy:.3f}", loss=f"{stats['train_loss']:.3f}")
            bar.update(1)
    accuracy = evaluate(model, test_loader, obfuscation, _seeded(config.seed + 3, device), device)
    metrics: dict[str, Any] = {"accuracy": accuracy, "train_accuracy": history[-1]["train_accuracy"]}
    if cem is not None:
        noise = ObfuscationConfig(noise_std=obfuscation.noise_std) if cem.config.evaluate_on == "noisy" else None
        eval_loader = DataLoader(load_dataset(config.dataset, "train", **data_args)[0], shuffle=False, **loader_args)
        features, labels = collect_features(model, eval_loader, noise, _seeded(config.seed + 4, device), device)
        metrics.update(cem.refit(features, labels, generator=mixture_gen))
        metrics["entropy_convention"] = "H(x) := 0 nats (uniform on [0,1]^d); relative bound"
    duration = time.perf_counter() - started
    manifest = save_bundle(
        out, model.cpu(), noise_std=obfuscation.noise_std, dataset=info.to_dict(), defenses=defenses.records(),
        cem={**config.cem.to_dict(), "noise_std": obfuscation.noise_std, "image_dim": image_dim} if config.cem.lam > 0 else None,
        metrics=metrics,
        training={
            "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr, "momentum": config.momentum,
            "weight_decay": config.weight_decay, "milestones": milestones, "lr_decay": LR_DECAY, "seed": config.seed,
            "device": str(device), "augment": config.augment, "duration_s": round(duration, 3),
            "torch": torch.__version__, "log_file": LOG_FILE,
        },
    )
    logger.info("wrote bundle %s (model %s, accuracy %.4f)", out, manifest.model_id, accuracy)
    return TrainResult(accuracy=accuracy, model_id=manifest.model_id, bundle=out, manifest=manifest,
                       history=history, duration_s=duration)
