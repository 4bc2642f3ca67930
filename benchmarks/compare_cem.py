"""Table-1-style comparison: the same σ with and without CEM, attacked by both inversion attacks.

For each seed it trains two digits models with ``cem-train`` (σ only: ``--cem-lambda 0``;
σ + CEM: the trainer's λ or ``--cem-lambda``), then attacks each bundle with the
decoder attack and the GAN attack (the generator initialised from that decoder
attack) under both protocols (``train``: attacker data = train split, scored on the
test split; ``infer``: attacker data = first 90% of the test split, scored on the
last 10%). It prints, as mean ± 95 % interval over the seeds (Student t), accuracy,
MSE per attack and protocol, PSNR and SSIM (train protocol, i.e. over the whole
test split) and Theorem 1's ξ with its kind (``cem.bounds``: ``estimate`` and
``relative``, each checked against the strongest attack), then the CEM gain:
paired per seed (relative change in % for MSE and ξ, points for accuracy) and
summarised the same way. Each attack's best epoch is recorded, and an attack
whose validation MSE still fell by more than 2 % in its last tenth of epochs is
flagged as not converged (``TrainedAttack.still_improving``).

    .venv/bin/python benchmarks/compare_cem.py --out runs/compare
    .venv/bin/python benchmarks/compare_cem.py --out runs/compare --decoder-epochs 10 --gan-epochs 30 --json

Defaults are the attacks' own (decoder 50 epochs, GAN 150); see docs/attacks.md for
how long that takes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attacker.attacks import (
    MODES,
    DecoderAttackConfig,
    ProgressMonitor,
    build_attack_split,
    compute_feature_set,
    evaluate_attack,
    load_images,
    run_attack,
)
from attacker.audit import native_size_of
from cem.bounds import privacy_bound
from cem.bundle import load_encoder, load_manifest
from cem.devices import resolve_device
from cem.manifest import Manifest
from cem.obfuscation import ObfuscationConfig
from cem.stats import mean_interval

logger = logging.getLogger("compare_cem")

VARIANTS = ("sigma", "sigma+cem")
MSE_COLUMNS = [f"{attack}_mse_{mode}" for attack in ("decoder", "gan") for mode in MODES]
QUALITY_COLUMNS = ["decoder_psnr", "decoder_ssim", "gan_psnr", "gan_ssim"]
BOUND_COLUMNS = ["xi_estimate", "xi_relative"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--noise-std", type=float, default=None, help="default: the trainer's profile σ")
    parser.add_argument("--cem-lambda", type=float, default=None, help="default: the trainer's profile λ")
    parser.add_argument("--train-epochs", type=int, default=None, help="default: the trainer's profile")
    parser.add_argument("--train-arg", action="append", default=[], help="extra cem-train argument (repeatable)")
    parser.add_argument("--decoder-epochs", type=int, default=50)
    parser.add_argument("--gan-epochs", type=int, default=150)
    parser.add_argument("--attacks", default="decoder,gan", help="decoder or decoder,gan")
    parser.add_argument("--attack-blocks", type=int, default=8, help="residual blocks of the decoding network")
    parser.add_argument("--attack-channels", type=int, default=64, help="channels of the decoding network")
    parser.add_argument("--attack-batch-size", type=int, default=256, help="decoder attack batch size")
    parser.add_argument("--seeds", default="0", help="comma-separated training and attack seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a shared machine)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reuse", action="store_true", help="reuse bundles already in --out instead of retraining")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line (last stdout line)")
    return parser


def train_variant(
    args: argparse.Namespace, variant: str, seed: int, like: Manifest | None = None
) -> tuple[Path, Manifest]:
    """Run ``cem-train`` (reused if asked and present). With ``like``, train with its width and epochs,
    so the two variants differ only in λ even if the trainer's profile changes in between."""
    bundle = args.out / f"{variant}-seed{seed}"
    if not (args.reuse and (bundle / "manifest.json").is_file()):
        command = [sys.executable, "-m", "training.cli", "--dataset", args.dataset,
                   "--seed", str(seed), "--device", args.device, "--out", str(bundle), "--json", *args.train_arg]
        if args.noise_std is not None:
            command += ["--noise-std", str(args.noise_std)]
        if variant == "sigma":
            command += ["--cem-lambda", "0"]
        elif args.cem_lambda is not None:
            command += ["--cem-lambda", str(args.cem_lambda)]
        epochs = args.train_epochs if like is None else like.training.get("epochs", args.train_epochs)
        if epochs is not None:
            command += ["--epochs", str(epochs)]
        if like is not None:
            command += ["--width", str(like.model.width)]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        logger.info("training %s seed %d: %s", variant, seed, " ".join(command[1:]))
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"cem-train failed for {variant} seed {seed} (exit {done.returncode})")
    manifest = load_manifest(bundle)
    if like is not None and (
        manifest.model != like.model or manifest.training.get("epochs") != like.training.get("epochs")
    ):
        raise SystemExit(f"{bundle} and the σ-only bundle differ in architecture or epochs; retrain without --reuse")
    return bundle, manifest


def describe_training(manifest: Manifest) -> dict[str, Any]:
    lam = manifest.cem.lam if manifest.cem else 0.0
    return {
        **manifest.metrics.to_dict(),
        "cem_lambda": lam,
        "noise_std": manifest.noise_std,
        "width": manifest.model.width,
        "train_epochs": manifest.training.get("epochs"),
        "train_s": manifest.training.get("duration_s"),
    }


def attack_bundle(args: argparse.Namespace, bundle: Path, seed: int, bar: tqdm) -> dict[str, Any]:
    """Both attacks under both protocols; returns the table's columns for this bundle."""
    manifest, encoder = load_encoder(bundle, resolve_device(args.device))
    obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    sets = {split: compute_feature_set(encoder, load_images(args.dataset, split)) for split in ("train", "test")}
    attacks = args.attacks.split(",")
    network = DecoderAttackConfig(
        batch_size=args.attack_batch_size, num_blocks=args.attack_blocks, channels=args.attack_channels
    )
    row: dict[str, Any] = {}
    shown = [""]

    def show(text: str) -> None:  # redraw once per epoch, not once per batch
        if text != shown[0]:
            shown[0] = text
            bar.set_postfix_str(text)

    for mode in MODES:
        split = build_attack_split(mode, sets["train"], sets["test"], seed=seed)
        monitor = ProgressMonitor(progress=lambda _, message, mode=mode: show(f"{bundle.name} {mode}: {message}"))
        started = time.perf_counter()
        decoder = run_attack("decoder", split, obfuscation, epochs=args.decoder_epochs, seed=seed, monitor=monitor,
                             decoder_config=network)
        row[f"decoder_s_{mode}"] = time.perf_counter() - started
        row[f"decoder_best_epoch_{mode}"] = decoder.best_epoch
        row[f"decoder_epochs_{mode}"] = len(decoder.history)
        row[f"decoder_still_improving_{mode}"] = decoder.still_improving()
        bar.update(1)
        native = native_size_of(manifest)
        scores = {"decoder": evaluate_attack(decoder.network, split.eval, obfuscation, seed=seed + 100,
                                             native_size=native).metrics}
        if "gan" in attacks:
            started = time.perf_counter()
            gan = run_attack("gan", split, obfuscation, epochs=args.gan_epochs, seed=seed, monitor=monitor,
                             init=decoder.network)
            row[f"gan_s_{mode}"] = time.perf_counter() - started
            row[f"gan_best_epoch_{mode}"] = gan.best_epoch
            row[f"gan_epochs_{mode}"] = len(gan.history)
            row[f"gan_still_improving_{mode}"] = gan.still_improving()
            bar.update(1)
            scores["gan"] = evaluate_attack(gan.network, split.eval, obfuscation, seed=seed + 100,
                                            native_size=native).metrics
        for attack, metrics in scores.items():
            logger.info("%s, %s attack, %s column: mse %.5f psnr %.2f ssim %.4f", bundle.name, attack, mode,
                        metrics["mse"], metrics["psnr"], metrics["ssim"])
            row[f"{attack}_mse_{mode}"] = metrics["mse"]
            row[f"{attack}_mse_native_{mode}"] = metrics.get("mse_native")
            if mode == "train":
                row[f"{attack}_psnr"], row[f"{attack}_ssim"] = metrics["psnr"], metrics["ssim"]
                row[f"{attack}_ssim_ref"] = metrics["ssim_ref"]
    for attack in attacks:
        for mode in MODES:
            if row.get(f"{attack}_still_improving_{mode}"):
                row.setdefault("not_converged", []).append(
                    f"{attack}/{mode}: validation MSE still falling in the last tenth of "
                    f"{row[f'{attack}_epochs_{mode}']} epochs (best epoch {row[f'{attack}_best_epoch_{mode}']})")
    measured = [(f"{a}_mse_{m}", f"{a}_mse_native_{m}") for a in attacks for m in MODES]
    bound = privacy_bound(manifest.metrics, attack_mse=min(row[k] for k, _ in measured),
                          attack_mse_native=min((row[k] for _, k in measured if row[k] is not None), default=None))
    if bound is not None:
        relative = bound.get("relative") or bound
        row["xi_relative"], row["xi_relative_exceeds_attack"] = relative["xi"], relative["exceeds_attack"]
        if bound["kind"] == "estimate":
            row["xi_estimate"], row["xi_estimate_exceeds_attack"] = bound["xi"], bound["exceeds_attack"]
        row["bound_warnings"] = bound["warnings"]
    return row


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric key present in every row: {"mean", "ci95", "n"} over the seeds."""
    keys = [
        k
        for k in rows[0]
        if k != "seed" and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
    ]
    return {k: mean_interval(float(r[k]) for r in rows).to_dict() for k in keys}


def compute_gain(base_rows: list[dict[str, Any]], cem_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired per seed, then mean ± interval. MSE and ξ: relative change in %; accuracy: points;
    PSNR and SSIM: absolute difference."""
    gain: dict[str, dict[str, Any]] = {}
    pairs = list(zip(base_rows, cem_rows, strict=True))
    for key in [*MSE_COLUMNS, *BOUND_COLUMNS]:
        values = [100.0 * (c[key] - b[key]) / b[key] for b, c in pairs if b.get(key) and c.get(key) is not None]
        if values:
            gain[key] = mean_interval(values).to_dict()
    for key in ["accuracy", *QUALITY_COLUMNS]:
        values = [(c[key] - b[key]) * (100.0 if key == "accuracy" else 1.0) for b, c in pairs if key in b and key in c]
        if values:
            gain[key] = mean_interval(values).to_dict()
    return gain


def _cell(entry: dict[str, Any] | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    if entry is None:
        return "n/a"
    text = f"{entry['mean'] * scale:{spec}}"
    return text + (f" ± {entry['ci95'] * scale:{spec.lstrip('+')}}" if entry.get("ci95") is not None else "") + suffix


def format_table(results: dict[str, dict[str, Any]], gain: dict[str, dict[str, Any]]) -> str:
    header = ["model", "λ", "acc %", "Dec train", "Dec infer", "GAN train", "GAN infer",
              "Dec PSNR", "Dec SSIM", "GAN PSNR", "GAN SSIM", "ξ estimate", "ξ relative"]
    keys = ["accuracy", *MSE_COLUMNS, *QUALITY_COLUMNS, *BOUND_COLUMNS]

    def spec(key: str) -> tuple[str, float]:
        if key == "accuracy":
            return ".2f", 100.0
        if key.startswith("xi"):
            return ".2e", 1.0
        return (".2f" if key.endswith("psnr") else ".5f" if "_mse_" in key else ".4f"), 1.0

    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for variant, row in results.items():
        lam = row.get("cem_lambda", {}).get("mean", 0.0)
        lines.append(" | ".join([variant, f"{lam:g}", *(_cell(row.get(k), *spec(k)) for k in keys)]))
    gain_cells = []
    for key in keys:
        if key == "accuracy":
            gain_cells.append(_cell(gain.get(key), "+.2f", suffix=" pt"))
        elif key in QUALITY_COLUMNS:
            gain_cells.append(_cell(gain.get(key), "+.3f"))
        else:
            gain_cells.append(_cell(gain.get(key), "+.0f", suffix="%"))
    lines.append(" | ".join(["CEM gain (paired)", "", *gain_cells]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    per_attack = 2 if "gan" in args.attacks.split(",") else 1
    per_seed: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tqdm(total=len(seeds) * len(VARIANTS) * len(MODES) * per_attack, desc="attacks", file=sys.stderr) as bar:
        for seed in seeds:
            first: Manifest | None = None
            for variant in VARIANTS:
                bundle, manifest = train_variant(args, variant, seed, like=first)
                first = first or manifest
                row = {**describe_training(manifest), **attack_bundle(args, bundle, seed, bar), "seed": seed}
                per_seed[variant].append(row)
                (args.out / f"{variant}-seed{seed}.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
    results = {variant: summarise_rows(rows) for variant, rows in per_seed.items()}
    gain = compute_gain(per_seed["sigma"], per_seed["sigma+cem"])
    table = format_table(results, gain)
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "seeds": seeds, "results": results, "per_seed": per_seed, "gain": gain}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    gan = f", GAN {args.gan_epochs} epochs" if "gan" in args.attacks.split(",") else ""
    sigma = per_seed["sigma"][0].get("noise_std")
    print(f"{args.dataset}, σ = {sigma}, seeds {seeds}, decoder {args.decoder_epochs} epochs "
          f"(batch ≤ {args.attack_batch_size}){gan}; mean ± 95 % interval (t) over seeds "
          "(MSE columns: held-out images; PSNR/SSIM: train column)")
    print(table)
    for variant, rows in per_seed.items():
        for row in rows:
            for note in [*row.get("not_converged", []), *row.get("bound_warnings", [])]:
                print(f"note: {variant} seed {row['seed']}: {note}")
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
