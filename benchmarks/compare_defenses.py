"""The paper's Table 1 on digits: every defense row, with and without CEM at the same σ.

Each cell (one row, with or without CEM, one seed) trains a bundle with ``cem-train``
and attacks it with the decoder attack (and the GAN attack with ``--attacks
decoder,gan``) under both protocols, exactly as ``compare_cem.py`` does for one row
(``train``: the attacker holds the training split, scored on the test split;
``infer``: the first 90 % of the test split, scored on the rest). The table gives,
per row, accuracy and attack MSE as mean ± 95 % interval over the seeds (Student
t), the CEM gain paired per seed (accuracy in points, MSE in %), and the paper's
two summary rows over the defense rows (No_defense excluded, as in the paper). A
second table gives the training cost: the median CPU time of one epoch and of the
whole run (ResSFL's proxy pre-training included), with and without CEM.

Rows (the paper's labels). Without CEM, λ = 0; with CEM, the trainer's λ or
``--cem-lambda``; both at the same σ:

    No_defense    --bottleneck none --noise-std 0 (no +CEM row: CEM needs noise on bounded features)
    Bottleneck    the 8-channel bottleneck and σ only
    DistCorr      --defense distcorr:W
    Dropout       --defense dropout:P
    PATROL        --defense patrol:W,PROXY
    ResSFL        --defense ressfl:W,PROXY
    Noise_Nopeek  --defense distcorr:W at the noise rows' σ
    Noise_ARL     --defense ressfl:W,PROXY at the noise rows' σ

Every row has the bottleneck (the paper adds it to all of them). W = 0.3 and P = 0.2
are the reference's shipped run configuration, not tuned here. PROXY (``--proxy``)
defaults to ``proxy_channels=16``, the digits attack's width (docs/attacks.md: as
strong as the paper's 64 channels on digits), because the reference's 64-channel
proxy costs 13 minutes per digits run on one CPU thread.

Cells run in ``--jobs`` worker processes of ``--threads`` torch threads each, one
progress bar for the grid and one log per cell in ``DIR/logs``. A cell's result is
stored in ``DIR/cells`` with the settings it was run with: a rerun (after an
interruption, or with more seeds or rows) does only the cells that are missing or
whose settings changed; ``--stored-only`` prints the table of stored cells and runs nothing.

    .venv/bin/python benchmarks/compare_defenses.py --out runs/defenses --seeds 0,1,2 --jobs 2 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compare_cem import (
    HEADER_NAMES,
    WORST_COLUMNS,
    Samples,
    attack_bundle,
    attack_key,
    compute_gain,
    convergence_note,
    describe_training,
    format_estimate,
    mse_columns,
    parse_attacks,
    write_grids,
)
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from attacker.attacks import MODES, GanAttackConfig, OptimizeAttackConfig
from cem.bundle import load_manifest
from cem.stats import mean_interval

logger = logging.getLogger("compare_defenses")

BASELINE = "No_defense"


@dataclass(frozen=True)
class DefenseRow:
    """One row of Table 1: the defenses it adds and which σ it trains at."""

    label: str
    defenses: tuple[str, ...] = ()
    noise: str = "shared"  # "shared": --noise-std; "noise": --noise-row-std; "none": σ = 0, no bottleneck

    @property
    def has_cem_variant(self) -> bool:
        return self.noise != "none"

    def train_args(self, args: argparse.Namespace, with_cem: bool) -> list[str]:
        """The ``cem-train`` arguments of this row (seed, output and device are the cell's)."""
        if self.noise == "none":
            command = ["--bottleneck", "none", "--noise-std", "0", "--cem-lambda", "0"]
        else:
            sigma = args.noise_std if self.noise == "shared" else args.noise_row_std
            command = ["--noise-std", str(sigma)] if sigma is not None else []
            if not with_cem:
                command += ["--cem-lambda", "0"]
            elif args.cem_lambda is not None:
                command += ["--cem-lambda", str(args.cem_lambda)]
        for spec in self.defenses:
            command += ["--defense", spec.format(w=args.weight, p=args.dropout, proxy=args.proxy)]
        if args.train_epochs is not None:
            command += ["--epochs", str(args.train_epochs)]
        return [*command, *args.train_arg]


ROWS = {row.label: row for row in (
    DefenseRow(BASELINE, noise="none"),
    DefenseRow("Bottleneck"),
    DefenseRow("DistCorr", ("distcorr:{w}",)),
    DefenseRow("Dropout", ("dropout:{p}",)),
    DefenseRow("PATROL", ("patrol:{w},{proxy}",)),
    DefenseRow("ResSFL", ("ressfl:{w},{proxy}",)),
    DefenseRow("Noise_Nopeek", ("distcorr:{w}",), noise="noise"),
    DefenseRow("Noise_ARL", ("ressfl:{w},{proxy}",), noise="noise"),
)}


@dataclass(frozen=True)
class Cell:
    """One trained bundle and its attacks."""

    row: str
    with_cem: bool
    seed: int

    @property
    def variant(self) -> str:
        return f"{self.row}+CEM" if self.with_cem else self.row

    @property
    def key(self) -> str:
        return f"{self.variant.lower()}-seed{self.seed}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row labels (default: all)")
    parser.add_argument("--noise-std", type=float, default=None,
                        help="σ of every row but the noise rows and No_defense (default: the trainer's profile σ)")
    parser.add_argument("--noise-row-std", type=float, default=0.2, help="σ of Noise_Nopeek and Noise_ARL")
    parser.add_argument("--cem-lambda", type=float, default=None, help="λ of the +CEM rows (default: the trainer's)")
    parser.add_argument("--weight", type=float, default=0.3, help="DistCorr, ResSFL and PATROL strength")
    parser.add_argument("--dropout", type=float, default=0.2, help="the Dropout row's p")
    parser.add_argument("--proxy", default="proxy_channels=16",
                        help="proxy fields of the ResSFL, PATROL and Noise_ARL specs (field=value,...)")
    parser.add_argument("--train-epochs", type=int, default=None, help="default: the trainer's profile")
    parser.add_argument("--train-arg", action="append", default=[], help="extra cem-train argument (repeatable)")
    parser.add_argument("--attacks", default="decoder",
                        help="comma-separated among decoder, gan, optimize, decoder+optimize")
    parser.add_argument("--optimize-steps", type=int, default=OptimizeAttackConfig().steps,
                        help="optimisation steps per image of optimize and decoder+optimize")
    parser.add_argument("--decoder-epochs", type=int, default=50)
    parser.add_argument("--gan-epochs", type=int, default=150)
    parser.add_argument("--gan-critic-dim", type=int, default=GanAttackConfig().critic_dim,
                        help="width of the GAN attack's critic (its first conv; default: the paper's DGWGAN32)")
    parser.add_argument("--attack-blocks", type=int, default=4, help="residual blocks of the decoding network")
    parser.add_argument("--attack-channels", type=int, default=16, help="channels of the decoding network")
    parser.add_argument("--attack-batch-size", type=int, default=256, help="decoder attack batch size (upper bound)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training and attack seeds")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stored-only", action="store_true",
                        help="run nothing: the table from the stored cells (an error names any cell missing)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line (last stdout line)")
    parser.add_argument("--grid", type=Path, default=None,
                        help="write DIR/<row>-<attack>-<column>.png per row: the first seed's scored originals "
                             "above their reconstructions without and with CEM (from the stored cells)")
    return parser


def parse_rows(text: str) -> list[DefenseRow]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    unknown = [label for label in labels if label not in ROWS]
    if unknown or not labels:
        raise SystemExit(f"expected rows among {', '.join(ROWS)}; got {', '.join(unknown) or 'none'}")
    return [ROWS[label] for label in labels]


def plan_cells(rows: list[DefenseRow], seeds: list[int]) -> list[Cell]:
    """Seed-major, so an interrupted grid has whole seeds rather than whole rows."""
    return [Cell(row.label, with_cem, seed) for seed in seeds for row in rows
            for with_cem in ((False, True) if row.has_cem_variant else (False,))]


def cell_settings(args: argparse.Namespace, cell: Cell) -> dict[str, Any]:
    """Everything a cell's result depends on; a stored cell is reused only if these are equal."""
    settings = {
        "train_args": ROWS[cell.row].train_args(args, cell.with_cem),
        "dataset": args.dataset, "seed": cell.seed, "attacks": args.attacks,
        "decoder_epochs": args.decoder_epochs, "gan_epochs": args.gan_epochs,
        "attack_blocks": args.attack_blocks, "attack_channels": args.attack_channels,
        "attack_batch_size": args.attack_batch_size,
    }
    if {"optimize", "decoder+optimize"} & set(parse_attacks(args.attacks)):
        settings["optimize_steps"] = args.optimize_steps
    if args.gan_critic_dim != GanAttackConfig().critic_dim:  # only when changed: earlier stored cells stay valid
        settings["gan_critic_dim"] = args.gan_critic_dim
    return settings


def _stored(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored if stored.get("settings") == settings else None


def training_cost(bundle: Path, manifest_training: dict[str, Any]) -> dict[str, Any]:
    """Median CPU seconds of one epoch (from the run's log) and the whole run's CPU seconds."""
    log = bundle / str(manifest_training.get("log_file", "train_log.jsonl"))
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    cpu = [e["epoch_cpu_seconds"] for e in epochs if "epoch_cpu_seconds" in e]
    return {"epoch_cpu_s": statistics.median(cpu) if cpu else None, "run_cpu_s": manifest_training.get("cpu_s")}


def run_cell(args: argparse.Namespace, cell: Cell) -> dict[str, Any]:
    """Train (or reuse) the cell's bundle, attack it, store and return its result row."""
    settings = cell_settings(args, cell)
    bundle = args.out / "bundles" / cell.key
    log_path = args.out / "logs" / f"{cell.key}.log"
    handler = logging.FileHandler(log_path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    try:
        trained, recipe = bundle / "cell_settings.json", {"dataset": args.dataset, "train_args": settings["train_args"]}
        if not (trained.is_file() and json.loads(trained.read_text()) == recipe):
            command = [sys.executable, "-m", "training.cli", "--dataset", args.dataset, "--seed", str(cell.seed),
                       "--device", args.device, "--threads", str(args.threads), "--out", str(bundle),
                       *settings["train_args"]]
            logger.info("training %s: %s", cell.key, " ".join(command[1:]))
            with open(log_path, "a") as log:
                done = subprocess.run(command, stdout=log, stderr=log, check=False,
                                      env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if done.returncode != 0:
                raise RuntimeError(f"cem-train failed for {cell.key} (exit {done.returncode}); see {log_path}")
            trained.write_text(json.dumps(recipe))
        manifest = load_manifest(bundle)
        samples: Samples = {}
        with tqdm(disable=True) as quiet:
            attacked = attack_bundle(args, bundle, cell.seed, quiet, samples)
        save_samples(args.out / "samples" / f"{cell.key}.safetensors", samples)
        result = {"row": cell.row, "cem": cell.with_cem, "seed": cell.seed, "settings": settings,
                  **describe_training(manifest), **training_cost(bundle, manifest.training), **attacked}
        stored = args.out / "cells" / f"{cell.key}.json"
        stored.with_suffix(".tmp").write_text(json.dumps(result, indent=2, default=str) + "\n")
        stored.with_suffix(".tmp").replace(stored)
        return result
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def save_samples(path: Path, samples: Samples) -> None:
    """A cell's grid samples (the first scored originals and reconstructions per attack and column). Every attack of
    a column scores the same originals, often one shared tensor, which safetensors refuses to store twice: each
    entry is written from its own copy."""
    save_file({f"{attack}|{mode}|{part}": tensor.detach().clone().contiguous()
               for (attack, mode), pair in samples.items()
               for part, tensor in zip(("originals", "reconstructions"), pair, strict=True)}, str(path))


def load_samples(path: Path) -> Samples:
    tensors = load_file(str(path))
    keys = {tuple(name.split("|")[:2]) for name in tensors}
    return {(attack, mode): (tensors[f"{attack}|{mode}|originals"], tensors[f"{attack}|{mode}|reconstructions"])
            for attack, mode in sorted(keys)}


def write_row_grids(args: argparse.Namespace, rows: list[DefenseRow], seed: int) -> list[Path]:
    """Per row with a CEM variant: ``<row>-<attack>-<column>.png``, the seed's originals above its
    reconstructions without and with CEM, from the stored cells' samples."""
    written = []
    for row in rows:
        if not row.has_cem_variant:
            continue
        cells = {Cell(row.label, with_cem, seed).variant: Cell(row.label, with_cem, seed) for with_cem in (False, True)}
        paths = {variant: args.out / "samples" / f"{cell.key}.safetensors" for variant, cell in cells.items()}
        if not all(path.is_file() for path in paths.values()):
            logger.warning("no grid for %s: the cells of seed %d stored no samples", row.label, seed)
            continue
        samples = {variant: load_samples(path) for variant, path in paths.items()}
        written += write_grids(args.grid, samples, prefix=f"{row.label.lower()}-")
    return written


def run_grid(args: argparse.Namespace, cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """Every cell's result, from the store where its settings match, else computed."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for cell in cells:
        stored = _stored(args.out / "cells" / f"{cell.key}.json", cell_settings(args, cell))
        if stored is None:
            todo.append(cell)
        else:
            results[cell.key] = stored
    logger.info("%d cells, %d stored, %d to run", len(cells), len(results), len(todo))
    if todo and args.stored_only:
        raise SystemExit(f"expected every cell stored (--stored-only), missing: {', '.join(c.key for c in todo)}")
    with tqdm(total=len(cells), initial=len(results), desc="cells", unit="cell", file=sys.stderr) as bar:
        if args.jobs <= 1:
            for cell in todo:
                bar.set_postfix_str(cell.key)
                results[cell.key] = run_cell(args, cell)
                bar.update(1)
        else:
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_cell, args, cell): cell for cell in todo}
                for future in as_completed(futures):
                    results[futures[future].key] = future.result()
                    bar.set_postfix_str(f"done {futures[future].key}")
                    bar.update(1)
    return results


def _numeric(rows: Iterable[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def _estimate(values: list[float]) -> dict[str, Any] | None:
    return mean_interval(values).to_dict() if values else None


def detail_columns(attacks: list[str]) -> list[str]:
    """Per attack: PSNR and SSIM (train column), attack accuracy and wall times (fit, scoring) per column."""
    return [f"{attack_key(a)}_{name}" for a in attacks
            for name in ("psnr", "ssim", *(f"{metric}_{m}" for metric in ("attack_accuracy", "s", "eval_s")
                                           for m in MODES))]


def summarise(rows: list[DefenseRow], seeds: list[int], results: dict[str, dict[str, Any]],
              attacks: list[str]) -> dict[str, Any]:
    """Per variant: mean ± interval over seeds; per row: the paired CEM gain; the paper's average rows.

    The averages are taken per seed over the defense rows that have both variants (the paper's
    "Average w/o CEM" and "w/ CEM"), then mean ± interval over the seeds; the average gain is
    the relative change of those per-seed averages, as the paper's summary compares averages."""
    columns = ["accuracy", *mse_columns(attacks), *(WORST_COLUMNS if len(attacks) > 1 else []),
               "epoch_cpu_s", "run_cpu_s"]
    variants: dict[str, dict[str, Any]] = {}
    gains: dict[str, dict[str, Any]] = {}
    for row in rows:
        for with_cem in (False, True) if row.has_cem_variant else (False,):
            per_seed = [results[Cell(row.label, with_cem, s).key] for s in seeds]
            variants[Cell(row.label, with_cem, 0).variant] = {
                "row": row.label, "cem": with_cem, "seeds": seeds,
                **{k: _estimate(_numeric(per_seed, k)) for k in [*columns, *detail_columns(attacks)]},
                "noise_std": per_seed[0].get("noise_std"), "cem_lambda": per_seed[0].get("cem_lambda"),
                "flagged": {attack: sum(bool(r.get(f"{attack_key(attack)}_still_improving_{mode}"))
                                        for r in per_seed for mode in MODES) for attack in attacks},
                "not_converged": [f"seed {r['seed']}: {convergence_note(r, attack, mode)}" for r in per_seed
                                  for attack in attacks for mode in MODES
                                  if r.get(f"{attack_key(attack)}_still_improving_{mode}")],
            }
        if row.has_cem_variant:
            gains[row.label] = compute_gain([results[Cell(row.label, False, s).key] for s in seeds],
                                            [results[Cell(row.label, True, s).key] for s in seeds], attacks)
    defense_rows = [row for row in rows if row.has_cem_variant]
    averages: dict[str, Any] = {}
    if defense_rows:
        averaged = {with_cem: [{k: statistics.fmean(_numeric(
            [results[Cell(row.label, with_cem, s).key] for row in defense_rows], k)) for k in columns[:-2]}
            for s in seeds] for with_cem in (False, True)}
        averages = {
            "without_cem": {k: _estimate([a[k] for a in averaged[False]]) for k in columns[:-2]},
            "with_cem": {k: _estimate([a[k] for a in averaged[True]]) for k in columns[:-2]},
            "gain": compute_gain(averaged[False], averaged[True], attacks),
            "rows": [row.label for row in defense_rows],
        }
    return {"variants": variants, "gain": gains, "average": averages}


def format_table(summary: dict[str, Any], attacks: list[str]) -> str:
    """Table 1's layout: rows = defenses with and without CEM, then the paper's average rows."""
    mse = [*mse_columns(attacks), *(WORST_COLUMNS if len(attacks) > 1 else [])]
    header = ["method", "σ", "λ", "acc %", *(f"{HEADER_NAMES[a]} {m} MSE" for a in attacks for m in MODES),
              *(f"worst {m} MSE" for m in MODES if len(attacks) > 1)]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]

    def values(entry: dict[str, Any]) -> list[str]:
        return [format_estimate(entry.get("accuracy"), ".2f", 100.0),
                *(format_estimate(entry.get(k), ".5f") for k in mse)]

    def gain_values(gain: dict[str, Any]) -> list[str]:
        return [format_estimate(gain.get("accuracy"), "+.2f", suffix=" pt"),
                *(format_estimate(gain.get(k), "+.0f", suffix=" %") for k in mse)]

    for variant, entry in summary["variants"].items():
        lines.append(" | ".join([variant, f"{entry['noise_std'] or 0:g}", f"{entry['cem_lambda'] or 0:g}",
                                 *values(entry)]))
        if entry["cem"]:
            lines.append(" | ".join([f"CEM gain, {entry['row']} (paired)", "", "",
                                     *gain_values(summary["gain"][entry["row"]])]))
    average = summary["average"]
    if average:
        lines.append(" | ".join(["**Average w/o CEM**", "", "0", *values(average["without_cem"])]))
        lines.append(" | ".join(["**Average w/ CEM**", "", "", *values(average["with_cem"])]))
        lines.append(" | ".join(["**CEM gain of the averages**", "", "", *gain_values(average["gain"])]))
    return "\n".join(lines)


def format_attack_table(summary: dict[str, Any], attacks: list[str]) -> str:
    """Per variant and attack: MSE per column, PSNR and SSIM (train column), attack accuracy per column, the
    wall time of fitting and scoring both columns (mean over seeds), and how many runs were flagged."""
    header = ["method", "attack", *(f"{m} MSE" for m in MODES), "PSNR", "SSIM",
              *(f"attack acc {m} %" for m in MODES), "wall s", "not converged"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for variant, entry in summary["variants"].items():
        runs = len(entry["seeds"]) * len(MODES)
        for attack in attacks:
            key = attack_key(attack)
            seconds = [entry[f"{key}_{kind}_{m}"]["mean"] for kind in ("s", "eval_s") for m in MODES
                       if entry.get(f"{key}_{kind}_{m}")]
            lines.append(" | ".join([
                variant, attack, *(format_estimate(entry.get(f"{key}_mse_{m}"), ".5f") for m in MODES),
                format_estimate(entry.get(f"{key}_psnr"), ".2f"), format_estimate(entry.get(f"{key}_ssim"), ".3f"),
                *(format_estimate(entry.get(f"{key}_attack_accuracy_{m}"), ".1f", 100.0) for m in MODES),
                f"{sum(seconds):.0f}" if seconds else "n/a", f"{entry['flagged'][attack]}/{runs}"]))
    return "\n".join(lines)


def format_cost(summary: dict[str, Any]) -> str:
    """CPU seconds of one training epoch and of the whole run, with and without CEM."""
    header = ["row", "epoch CPU s", "epoch CPU s +CEM", "ratio", "run CPU s", "run CPU s +CEM"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    variants = summary["variants"]
    for variant, entry in variants.items():
        if entry["cem"]:
            continue
        with_cem = variants.get(f"{variant}+CEM")
        base = entry["epoch_cpu_s"]["mean"] if entry.get("epoch_cpu_s") else None
        cem = with_cem["epoch_cpu_s"]["mean"] if with_cem and with_cem.get("epoch_cpu_s") else None
        ratio = f"{cem / base:.2f}×" if base and cem else "—"
        lines.append(" | ".join([variant, format_estimate(entry.get("epoch_cpu_s"), ".2f"),
                                 format_estimate(with_cem.get("epoch_cpu_s"), ".2f") if with_cem else "—", ratio,
                                 format_estimate(entry.get("run_cpu_s"), ".0f"),
                                 format_estimate(with_cem.get("run_cpu_s"), ".0f") if with_cem else "—"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = parse_rows(args.rows)
    seeds = [int(s) for s in args.seeds.split(",")]
    attacks = parse_attacks(args.attacks)
    for folder in ("cells", "logs", "bundles", "samples"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    results = run_grid(args, plan_cells(rows, seeds))
    summary = summarise(rows, seeds, results, attacks)
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"{args.dataset}, seeds {seeds}, decoder attack {args.decoder_epochs} epochs "
          f"({args.attack_channels} channels, {args.attack_blocks} blocks); mean ± 95 % interval (t) over seeds; "
          "MSE on held-out images")
    print(format_table(summary, attacks))
    if len(attacks) > 1:
        print()
        print(format_attack_table(summary, attacks))
    print()
    print(format_cost(summary))
    runs = len(seeds) * len(attacks) * len(MODES)
    for variant, entry in summary["variants"].items():
        if entry["not_converged"]:
            print(f"note: {variant}: {len(entry['not_converged'])} of {runs} attack runs flagged as not converged, "
                  f"e.g. {entry['not_converged'][0]}")
    if len(attacks) > 1:
        for variant, entry in summary["variants"].items():
            for mode in MODES:
                names = [results[Cell(entry["row"], entry["cem"], s).key].get(f"worst_attack_{mode}") for s in seeds]
                counts = ", ".join(f"{name} {names.count(name)}/{len(seeds)}" for name in dict.fromkeys(names))
                print(f"worst case: {variant} {mode}: {counts} seeds")
    if args.grid is not None:
        for path in write_row_grids(args, rows, seeds[0]):
            print(f"grid: {path} (seed {seeds[0]}; rows: originals, without CEM, with CEM)")
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
