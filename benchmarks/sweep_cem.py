"""Accuracy vs leakage sweep of the CEM λ on digits, with two fast inversion probes.

Not the project's attack (that is ``attacker/``): two quick, honest probes that
see exactly what the edge transmits (the bundle's noise/dropout/top-k applied by
``cem.obfuscation.obfuscate`` with fresh noise every pass), fitted on the train
split and scored on the held-out test split:

* ``ridge``: linear least squares (scikit-learn Ridge) from flattened features to pixels;
* ``conv``: a small conv decoder (features -> image), Adam, a few epochs.

Higher probe MSE = less reconstructable. ``mean`` is the MSE of always answering
the mean training image (what an attacker gets from no features at all).

    .venv/bin/python benchmarks/sweep_cem.py --lambdas 0,0.05,0.1 --seeds 0,1 --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from torch import nn

from cem.bundle import load_bundle
from cem.data import load_dataset
from cem.obfuscation import ObfuscationConfig, obfuscate
from training import CEMConfig, TrainConfig, train


def transmitted(bundle: Path, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features as sent (N, C, H, W), images (N, 1, S, S)) for one split, fresh noise."""
    manifest, model = load_bundle(bundle)
    dataset, _ = load_dataset(manifest.dataset["name"], split)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    config = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    with torch.no_grad():
        features = obfuscate(model.encoder(images), config, torch.Generator().manual_seed(seed))
    return features, images


def probe_ridge(bundle: Path, seed: int) -> float:
    z_train, x_train = transmitted(bundle, "train", seed)
    z_test, x_test = transmitted(bundle, "test", seed + 1)
    ridge = Ridge(alpha=1.0).fit(z_train.flatten(1).numpy(), x_train.flatten(1).numpy())
    prediction = torch.from_numpy(ridge.predict(z_test.flatten(1).numpy())).clamp(0, 1)
    return float(F.mse_loss(prediction, x_test.flatten(1)))


class ProbeDecoder(nn.Module):
    """(B, C, 8, 8) -> (B, 1, 32, 32) in [0, 1]."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, out_channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def probe_conv(bundle: Path, seed: int, epochs: int) -> float:
    """Noise-aware: fresh client-transform noise on the train features every epoch."""
    torch.manual_seed(seed)
    manifest, model = load_bundle(bundle)
    dataset, _ = load_dataset(manifest.dataset["name"], "train")
    test, _ = load_dataset(manifest.dataset["name"], "test")
    x_train = torch.stack([dataset[i][0] for i in range(len(dataset))])
    x_test = torch.stack([test[i][0] for i in range(len(test))])
    config = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    with torch.no_grad():
        clean_train, clean_test = model.encoder(x_train), model.encoder(x_test)
    decoder = ProbeDecoder(clean_train.shape[1], x_train.shape[1])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            z = obfuscate(clean_train[idx], config, generator)
            loss = F.mse_loss(decoder(z), x_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        z_test = obfuscate(clean_test, config, torch.Generator().manual_seed(seed + 1))
        return float(F.mse_loss(decoder(z_test), x_test))


def mean_image_mse() -> float:
    train_set, _ = load_dataset("digits", "train")
    test_set, _ = load_dataset("digits", "test")
    mean = torch.stack([train_set[i][0] for i in range(len(train_set))]).mean(0)
    x_test = torch.stack([test_set[i][0] for i in range(len(test_set))])
    return float(F.mse_loss(mean.expand_as(x_test), x_test))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lambdas", default="0,0.05,0.1,0.2")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--cem-k", type=int, default=3)
    parser.add_argument("--cem-on", default="clean")
    parser.add_argument("--cem-loss", default="paper_diag")
    parser.add_argument("--cem-lr-coupling", default="none")
    parser.add_argument("--cem-warmup-epochs", type=int, default=1)
    parser.add_argument("--defense", action="append", default=[])
    parser.add_argument("--probe-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    return parser


def main() -> None:
    args = get_args_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"mean-image MSE (no features) = {mean_image_mse():.5f}", flush=True)
    header = f"{'lambda':>7} {'seed':>4} {'acc':>7} {'ridge_mse':>9} {'conv_mse':>9} {'H_rel':>9} {'train_s':>7}"
    print(header, flush=True)
    for lam in (float(v) for v in args.lambdas.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            out = args.out / f"lam{lam:g}-seed{seed}"
            started = time.perf_counter()
            result = train(TrainConfig(
                dataset="digits", out_dir=out, width=args.width, epochs=args.epochs, noise_std=args.noise_std,
                defenses=tuple(args.defense), seed=seed, progress=False,
                cem=CEMConfig(lam=lam, k=args.cem_k, evaluate_on=args.cem_on, loss_form=args.cem_loss,
                              lr_coupling=args.cem_lr_coupling, warmup_epochs=args.cem_warmup_epochs),
            ))
            seconds = time.perf_counter() - started
            ridge = probe_ridge(out, seed)
            conv = probe_conv(out, seed, args.probe_epochs)
            row = {"lambda": lam, "seed": seed, "accuracy": result.accuracy, "ridge_mse": ridge, "conv_mse": conv,
                   "entropy_bound": result.metrics.get("entropy_bound"), "train_seconds": seconds,
                   "variant": {k: getattr(args, k) for k in ("cem_k", "cem_on", "cem_loss", "cem_lr_coupling",
                                                             "cem_warmup_epochs", "noise_std")}}
            print(f"{lam:7g} {seed:4d} {result.accuracy:7.4f} {ridge:9.5f} {conv:9.5f} "
                  f"{row['entropy_bound']:9.2f} {seconds:7.1f}", flush=True)
            print(json.dumps(row), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
