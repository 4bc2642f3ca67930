"""Table-1-style comparison: the same σ with and without CEM, attacked by the inversion attacks.

For each seed it trains two digits models with ``cem-train`` (σ only: ``--cem-lambda 0``;
σ + CEM: the trainer's λ or ``--cem-lambda``), then attacks each bundle with the
``--attacks`` asked for (default: the decoder attack and the GAN attack, whose
generator is initialised from that decoder attack; also ``optimize`` and
``decoder+optimize``, which starts from that decoder attack) under both protocols
(``train``: attacker data = train split, scored on the test split; ``infer``:
attacker data = first 90% of the test split, scored on the last 10%). It prints,
as mean ± 95 % interval over the seeds (Student t), accuracy,
MSE per attack and protocol, PSNR and SSIM (train protocol, i.e. over the whole
test split) and Theorem 1's ξ with its kind (``cem.bounds``: ``estimate`` and
``relative``, each checked against the strongest attack), then the CEM gain:
paired per seed (relative change in % for MSE and ξ, points for accuracy) and
summarised the same way. The worst case is, per seed and column, the lowest MSE any
attack reached (and which attack). Each attack's best epoch is recorded, and an attack
whose validation MSE still fell by more than 2 % in its last tenth of epochs is
flagged as not converged (``TrainedAttack.still_improving``).

    .venv/bin/python benchmarks/compare_cem.py --out runs/compare
    .venv/bin/python benchmarks/compare_cem.py --out runs/compare --decoder-epochs 10 --gan-epochs 30 --json
    .venv/bin/python benchmarks/compare_cem.py --out runs/attacks --attacks decoder,gan,optimize,decoder+optimize

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
from torchvision.utils import save_image
from tqdm import tqdm

from attacker.attacks import (
    MODES,
    DecoderAttackConfig,
    GanAttackConfig,
    OptimizeAttackConfig,
    ProgressMonitor,
    TrainedAttack,
    build_attack_split,
    compute_feature_set,
    evaluate_attack,
    evaluation_classifier,
    load_labeled_images,
    run_attack,
)
from attacker.audit import native_size_of
from cem.bounds import privacy_bound
from cem.bundle import load_encoder, load_manifest
from cem.convergence import doubling_note
from cem.devices import resolve_device
from cem.manifest import Manifest
from cem.obfuscation import ObfuscationConfig
from cem.stats import mean_interval
from cem.worst_case import worst_case

logger = logging.getLogger("compare_cem")

VARIANTS = ("sigma", "sigma+cem")
COLUMN_KEYS = {"decoder": "decoder", "gan": "gan", "optimize": "optimize", "decoder+optimize": "hybrid"}
HEADER_NAMES = {"decoder": "Dec", "gan": "GAN", "optimize": "Opt", "decoder+optimize": "Dec+Opt"}
WORST_COLUMNS = [f"worst_mse_{mode}" for mode in MODES]
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
    parser.add_argument("--gan-critic-dim", type=int, default=GanAttackConfig().critic_dim,
                        help="width of the GAN attack's critic (its first conv; default: the paper's DGWGAN32)")
    parser.add_argument("--attacks", default="decoder,gan",
                        help=f"comma-separated, among {', '.join(COLUMN_KEYS)}")
    parser.add_argument("--optimize-steps", type=int, default=OptimizeAttackConfig().steps,
                        help="optimisation steps per image of optimize and decoder+optimize")
    parser.add_argument("--attack-blocks", type=int, default=8, help="residual blocks of the decoding network")
    parser.add_argument("--attack-channels", type=int, default=64, help="channels of the decoding network")
    parser.add_argument("--attack-batch-size", type=int, default=256, help="decoder attack batch size")
    parser.add_argument("--seeds", default="0", help="comma-separated training and attack seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a shared machine)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reuse", action="store_true", help="reuse bundles already in --out instead of retraining")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line (last stdout line)")
    parser.add_argument("--grid", type=Path, default=None,
                        help="write DIR/<attack>-<column>.png: the first seed's scored originals above their "
                             "reconstructions without and with CEM")
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


def attack_key(attack: str) -> str:
    """The column prefix of an attack (``decoder+optimize`` is ``hybrid``, a name that reads as a key)."""
    return COLUMN_KEYS[attack]


def mse_columns(attacks: list[str]) -> list[str]:
    return [f"{attack_key(attack)}_mse_{mode}" for attack in attacks for mode in MODES]


def parse_attacks(text: str) -> list[str]:
    attacks = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in COLUMN_KEYS]
    if unknown or not attacks:
        raise SystemExit(f"expected attacks among {', '.join(COLUMN_KEYS)}, got {', '.join(unknown) or 'none'}")
    return attacks


def _record_training(row: dict[str, Any], key: str, mode: str, trained: TrainedAttack, seconds: float) -> None:
    row[f"{key}_s_{mode}"] = seconds
    row[f"{key}_best_epoch_{mode}"] = trained.best_epoch
    row[f"{key}_epochs_{mode}"] = trained.extra.get("steps", len(trained.history))  # optimisation: steps
    row[f"{key}_still_improving_{mode}"] = trained.still_improving()
    if trained.half_budget is not None:
        row[f"{key}_doubling_gain_{mode}"] = trained.half_budget.gain


def convergence_note(row: dict[str, Any], attack: str, mode: str) -> str:
    """Why an attack was flagged as not converged, in the terms of the check that flagged it."""
    key = attack_key(attack)
    gain = row.get(f"{key}_doubling_gain_{mode}")
    if gain is not None:
        return f"{attack}/{mode}: {doubling_note(gain)}"
    unit = "steps" if "optimize" in attack else "epochs"
    return (f"{attack}/{mode}: validation MSE still falling at the end of its {row[f'{key}_epochs_{mode}']} "
            f"{unit} (best {row[f'{key}_best_epoch_{mode}']}), or doubling its epochs still helped by > 2 %")


Samples = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]


def attack_bundle(args: argparse.Namespace, bundle: Path, seed: int, bar: tqdm,
                  samples: Samples | None = None) -> dict[str, Any]:
    """Every asked-for attack under both protocols; returns the table's columns for this bundle.

    ``samples``, when given, receives per (attack, column) the first scored originals and their
    reconstructions (``evaluate_attack``'s grid samples), for ``--grid``.

    The decoder attack runs once per protocol and is shared: it initialises the GAN's generator and
    starts the hybrid's optimisation, as ``run_attack`` would train it for them. Wall times: ``_s_`` the
    attack's training or selection (the hybrid's includes its decoder's), ``_eval_s_`` its scoring, which
    for the optimisation attacks is an optimisation per scored image."""
    manifest, encoder = load_encoder(bundle, resolve_device(args.device))
    obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    sets = {split: compute_feature_set(encoder, *load_labeled_images(args.dataset, split))
            for split in ("train", "test")}
    attacks = parse_attacks(args.attacks)
    network = DecoderAttackConfig(
        batch_size=args.attack_batch_size, num_blocks=args.attack_blocks, channels=args.attack_channels
    )
    optimize = OptimizeAttackConfig(steps=args.optimize_steps)
    native = native_size_of(manifest)
    row: dict[str, Any] = {}
    shown = [""]

    def show(text: str) -> None:  # redraw once per epoch, not once per batch
        if text != shown[0]:
            shown[0] = text
            bar.set_postfix_str(text)

    for mode in MODES:
        split = build_attack_split(mode, sets["train"], sets["test"], seed=seed)
        classifier = evaluation_classifier(split.fit, split.val, manifest.model.num_classes, seed=seed)
        monitor = ProgressMonitor(progress=lambda _, message, mode=mode: show(f"{bundle.name} {mode}: {message}"))
        trained: dict[str, TrainedAttack] = {}
        decoder_s = 0.0
        if {"decoder", "gan", "decoder+optimize"} & set(attacks):
            started = time.perf_counter()
            trained["decoder"] = run_attack("decoder", split, obfuscation, epochs=args.decoder_epochs, seed=seed,
                                            monitor=monitor, decoder_config=network)
            decoder_s = time.perf_counter() - started
            _record_training(row, "decoder", mode, trained["decoder"], decoder_s)
        for attack in attacks:
            started = time.perf_counter()
            if attack == "gan":
                trained[attack] = run_attack("gan", split, obfuscation, epochs=args.gan_epochs, seed=seed,
                                             monitor=monitor, init=trained["decoder"].network,
                                             gan_config=GanAttackConfig(critic_dim=args.gan_critic_dim),
                                             resumable=False)  # its time is part of the table
            elif attack == "optimize":
                trained[attack] = run_attack("optimize", split, obfuscation, seed=seed, monitor=monitor,
                                             encoder=encoder, optimize_config=optimize)
            elif attack == "decoder+optimize":
                trained[attack] = run_attack(attack, split, obfuscation, seed=seed, monitor=monitor, encoder=encoder,
                                             optimize_config=optimize, decoder=trained["decoder"])
            else:
                continue
            _record_training(row, attack_key(attack), mode, trained[attack],
                             time.perf_counter() - started + (decoder_s if attack == "decoder+optimize" else 0.0))
            if "tv_weight" in trained[attack].extra:
                row[f"{attack_key(attack)}_tv_weight_{mode}"] = trained[attack].extra["tv_weight"]
        bar.update(1)
        for attack in attacks:
            started = time.perf_counter()
            evaluation = evaluate_attack(trained[attack].network, split.eval, obfuscation, seed=seed + 100,
                                         native_size=native, classifier=classifier)
            metrics = evaluation.metrics
            if samples is not None:
                samples[(attack, mode)] = (evaluation.originals, evaluation.reconstructions)
            key = attack_key(attack)
            row[f"{key}_eval_s_{mode}"] = time.perf_counter() - started
            logger.info("%s, %s attack, %s column: mse %.5f psnr %.2f ssim %.4f", bundle.name, attack, mode,
                        metrics["mse"], metrics["psnr"], metrics["ssim"])
            row[f"{key}_mse_{mode}"] = metrics["mse"]
            row[f"{key}_mse_native_{mode}"] = metrics.get("mse_native")
            row[f"{key}_attack_accuracy_{mode}"] = metrics["attack_accuracy"]
            row[f"classifier_accuracy_{mode}"] = metrics["classifier_accuracy"]
            if mode == "train":
                row[f"{key}_psnr"], row[f"{key}_ssim"] = metrics["psnr"], metrics["ssim"]
                row[f"{key}_ssim_ref"] = metrics["ssim_ref"]
    strongest = worst_case({attack: {mode: row[f"{attack_key(attack)}_mse_{mode}"] for mode in MODES}
                            for attack in attacks})
    for mode, entry in strongest.items():
        row[f"worst_mse_{mode}"], row[f"worst_attack_{mode}"] = entry["mse"], entry["attack"]
    for attack in [*(["decoder"] if "decoder" not in attacks and f"decoder_epochs_{MODES[0]}" in row else []),
                   *attacks]:
        key = attack_key(attack)
        for mode in MODES:
            if row.get(f"{key}_still_improving_{mode}"):
                row.setdefault("not_converged", []).append(convergence_note(row, attack, mode))
    measured = [(f"{attack_key(a)}_mse_{m}", f"{attack_key(a)}_mse_native_{m}") for a in attacks for m in MODES]
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


def quality_columns(attacks: list[str]) -> list[str]:
    """PSNR and SSIM (train column) and attack accuracy (both columns) of each attack."""
    return [*(f"{attack_key(a)}_{metric}" for a in attacks for metric in ("psnr", "ssim")),
            *(f"{attack_key(a)}_attack_accuracy_{mode}" for a in attacks for mode in MODES)]


def compute_gain(base_rows: list[dict[str, Any]], cem_rows: list[dict[str, Any]],
                 attacks: list[str]) -> dict[str, dict[str, Any]]:
    """Paired per seed, then mean ± interval. MSE (each attack's and the worst case's) and ξ: relative
    change in %; accuracy and attack accuracy: points; PSNR and SSIM: absolute difference."""
    gain: dict[str, dict[str, Any]] = {}
    pairs = list(zip(base_rows, cem_rows, strict=True))
    for key in [*mse_columns(attacks), *WORST_COLUMNS, *BOUND_COLUMNS]:
        values = [100.0 * (c[key] - b[key]) / b[key] for b, c in pairs if b.get(key) and c.get(key) is not None]
        if values:
            gain[key] = mean_interval(values).to_dict()
    for key in ["accuracy", *quality_columns(attacks)]:
        scale = 100.0 if key == "accuracy" or "_attack_accuracy_" in key else 1.0  # accuracies in points
        values = [(c[key] - b[key]) * scale for b, c in pairs if key in b and key in c]
        if values:
            gain[key] = mean_interval(values).to_dict()
    return gain


def format_estimate(entry: dict[str, Any] | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """``mean ± ci95`` of a ``mean_interval`` dict, times ``scale``, formatted with ``spec``; ``n/a`` for None."""
    if entry is None:
        return "n/a"
    text = f"{entry['mean'] * scale:{spec}}"
    return text + (f" ± {entry['ci95'] * scale:{spec.lstrip('+')}}" if entry.get("ci95") is not None else "") + suffix


def format_table(results: dict[str, dict[str, Any]], gain: dict[str, dict[str, Any]], attacks: list[str]) -> str:
    """One row per variant and the paired gain: accuracy, each attack's MSE per column, the worst case
    (the lowest MSE of any attack, per seed), PSNR/SSIM of the train column, and both ξ."""
    quality = quality_columns(attacks)
    keys = ["accuracy", *mse_columns(attacks), *WORST_COLUMNS, *quality, *BOUND_COLUMNS]
    header = ["model", "λ", "acc %", *(f"{HEADER_NAMES[a]} {m}" for a in attacks for m in MODES),
              *(f"worst {m}" for m in MODES), *(f"{HEADER_NAMES[a]} {q}" for a in attacks for q in ("PSNR", "SSIM")),
              *(f"{HEADER_NAMES[a]} atk acc {m}" for a in attacks for m in MODES), "ξ estimate", "ξ relative"]

    def spec(key: str) -> tuple[str, float]:
        if key == "accuracy":
            return ".2f", 100.0
        if key.startswith("xi"):
            return ".2e", 1.0
        if "_attack_accuracy_" in key:
            return ".1f", 100.0
        return (".2f" if key.endswith("psnr") else ".5f" if "_mse_" in key else ".4f"), 1.0

    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for variant, row in results.items():
        lam = row.get("cem_lambda", {}).get("mean", 0.0)
        lines.append(" | ".join([variant, f"{lam:g}", *(format_estimate(row.get(k), *spec(k)) for k in keys)]))
    gain_cells = []
    for key in keys:
        if key == "accuracy" or "_attack_accuracy_" in key:
            gain_cells.append(format_estimate(gain.get(key), "+.2f", suffix=" pt"))
        elif key in quality:
            gain_cells.append(format_estimate(gain.get(key), "+.3f"))
        else:
            gain_cells.append(format_estimate(gain.get(key), "+.0f", suffix="%"))
    lines.append(" | ".join(["CEM gain (paired)", "", *gain_cells]))
    return "\n".join(lines)


def write_grids(directory: Path, samples: dict[str, Samples], prefix: str = "") -> list[Path]:
    """One PNG per (attack, column), ``<prefix><attack>-<column>.png``: a row of originals, then one row of
    reconstructions per variant (in ``samples``' order; every variant scored the same images)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    variants = list(samples)
    for attack, mode in samples[variants[0]]:
        originals = samples[variants[0]][(attack, mode)][0]
        rows = [originals, *(samples[variant][(attack, mode)][1] for variant in variants)]
        path = directory / f"{prefix}{attack_key(attack)}-{mode}.png"
        save_image(torch.cat(rows).clamp(0, 1), path, nrow=len(originals), padding=2, pad_value=1.0)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    attacks = parse_attacks(args.attacks)
    per_seed: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    samples: dict[str, Samples] = {v: {} for v in VARIANTS}
    with tqdm(total=len(seeds) * len(VARIANTS) * len(MODES), desc="columns", file=sys.stderr) as bar:
        for seed in seeds:
            first: Manifest | None = None
            for variant in VARIANTS:
                bundle, manifest = train_variant(args, variant, seed, like=first)
                first = first or manifest
                kept = samples[variant] if args.grid is not None and seed == seeds[0] else None
                row = {**describe_training(manifest), **attack_bundle(args, bundle, seed, bar, kept), "seed": seed}
                per_seed[variant].append(row)
                (args.out / f"{variant}-seed{seed}.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
    results = {variant: summarise_rows(rows) for variant, rows in per_seed.items()}
    gain = compute_gain(per_seed["sigma"], per_seed["sigma+cem"], attacks)
    table = format_table(results, gain, attacks)
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "seeds": seeds, "results": results, "per_seed": per_seed, "gain": gain}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    critic = "" if args.gan_critic_dim == GanAttackConfig().critic_dim else f", critic width {args.gan_critic_dim}"
    gan = f", GAN {args.gan_epochs} epochs{critic}" if "gan" in attacks else ""
    steps = f", optimisation {args.optimize_steps} steps per image" if {"optimize", "decoder+optimize"} & set(
        attacks) else ""
    sigma = per_seed["sigma"][0].get("noise_std")
    print(f"{args.dataset}, σ = {sigma}, seeds {seeds}, decoder {args.decoder_epochs} epochs "
          f"(batch ≤ {args.attack_batch_size}){gan}{steps}; mean ± 95 % interval (t) over seeds "
          "(MSE columns: held-out images; PSNR/SSIM: train column)")
    print(table)
    for variant, rows in per_seed.items():
        for mode in MODES:
            names = [row.get(f"worst_attack_{mode}") for row in rows]
            counts = ", ".join(f"{name} {names.count(name)}/{len(rows)}" for name in dict.fromkeys(names))
            print(f"worst case: {variant} {mode}: {counts} seeds")
    for variant, rows in per_seed.items():
        for row in rows:
            for note in [*row.get("not_converged", []), *row.get("bound_warnings", [])]:
                print(f"note: {variant} seed {row['seed']}: {note}")
    if args.grid is not None:
        for path in write_grids(args.grid, samples):
            print(f"grid: {path} (seed {seeds[0]}; rows: originals, {', '.join(VARIANTS)})")
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
