"""Choose a data set's defaults on a validation split: accuracy vs leakage over λ (and σ), ≥ 3 seeds.

Every model trains on the training split minus a carved validation part
(``--validation-fraction``, the data set's profile value by default: digits 0.2, a
fixed permutation; mnist5k 0.125, its own stratified 500 images; see
``cem.data.validation``); the numbers used for the choice are measured on that
validation part only, never on the test split that README and docs report.

Leakage is measured by a fast, honest probe, not the project's attack (that is
``attacker/``): scikit-learn Ridge (α = 1) from the features exactly as the edge
sends them (the bundle's client transform with fresh noise) to the pixels,
fitted on the fit part and scored on the validation part. ``mean`` is the MSE
of always answering the mean fit image.

Rule (printed at the end): the default λ is the largest λ of the grid whose
mean paired validation-accuracy cost against λ = 0 is at most ``--max-cost``
points. The epoch count is read off the λ = 0 runs' validation-accuracy curve
(printed at a quarter, half, three quarters and all of the epochs).

    .venv/bin/python benchmarks/sweep_cem.py --lambdas 0,2,4,8,16 --seeds 0,1,2 --threads 1 \\
        --out runs/sweep --json runs/sweep.json
    .venv/bin/python benchmarks/sweep_cem.py --dataset mnist5k --noise-stds 0.05,0.1,0.2 --lambdas 0,2,8 \\
        --seeds 0,1,2 --threads 1 --out runs/sweep-mnist5k --json runs/sweep-mnist5k.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge

from cem.bundle import load_bundle
from cem.data import load_dataset
from cem.data.validation import carve_validation
from cem.obfuscation import ObfuscationConfig, obfuscate
from cem.stats import mean_interval
from training import CEMConfig, TrainConfig, train
from training.config import profile_for


def split_images(dataset_name: str, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit images, validation images) of the data set's training split, carved as the trainer carves it."""
    dataset, _ = load_dataset(dataset_name, "train")
    fit_idx, val_idx = carve_validation(dataset_name, len(dataset), fraction)  # type: ignore[arg-type]
    stack = lambda idx: torch.stack([dataset[int(i)][0] for i in idx])  # noqa: E731
    return stack(fit_idx), stack(val_idx)


def probe_ridge(bundle: Path, fit: torch.Tensor, val: torch.Tensor, seed: int) -> float:
    """Validation MSE of a ridge regression from transmitted features to pixels."""
    manifest, model = load_bundle(bundle)
    config = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z_fit = obfuscate(model.encoder(fit), config, generator)
        z_val = obfuscate(model.encoder(val), config, generator)
    ridge = Ridge(alpha=1.0).fit(z_fit.flatten(1).numpy(), fit.flatten(1).numpy())
    prediction = torch.from_numpy(ridge.predict(z_val.flatten(1).numpy())).float().clamp(0, 1)
    return float(F.mse_loss(prediction, val.flatten(1)))


def val_curve(bundle: Path) -> list[float]:
    """The run's validation accuracy after each epoch (from the bundle's training log)."""
    log = (bundle / "train_log.jsonl").read_text().splitlines()
    return [float(entry["val_accuracy"]) for entry in map(json.loads, filter(None, log)) if "val_accuracy" in entry]


def epoch_curve(rows: list[dict]) -> dict[str, dict]:
    """Per σ, over the λ = 0 runs: mean ± interval of the validation accuracy at 1/4, 1/2, 3/4 and all epochs."""
    curves: dict[str, dict] = {}
    for sigma in sorted({r["noise_std"] for r in rows}):
        runs = [r["val_accuracy_by_epoch"] for r in rows
                if r["noise_std"] == sigma and r["lambda"] == 0 and r.get("val_accuracy_by_epoch")]
        if not runs:
            continue
        epochs = min(len(c) for c in runs)
        marks = sorted({max(1, round(epochs * f)) for f in (0.25, 0.5, 0.75, 1.0)})
        curves[str(sigma)] = {str(e): mean_interval(c[e - 1] for c in runs).to_dict() for e in marks}
    return curves


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--lambdas", default="0,2,4,8,16", help="the paper's λ values")
    parser.add_argument("--noise-stds", default=None, help="σ values (default: the data set profile's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--cem-loss", default="paper_diag")
    parser.add_argument("--cem-lr-coupling", default="ref")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="share of the training split held out (default: the data set profile's)")
    parser.add_argument("--max-cost", type=float, default=1.0, help="accuracy points the default may cost")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--reuse", action="store_true", help="reuse rows already in --json")
    parser.add_argument("--json", type=Path, default=None, help="write every row and the summary here")
    return parser


def summarise(rows: list[dict], max_cost: float) -> dict:
    """Per (σ, λ): mean ± 95 % interval of val accuracy, paired cost and probe MSE; the chosen λ."""
    base = {(r["noise_std"], r["seed"]): r for r in rows if r["lambda"] == 0}
    groups: dict[tuple[float, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["noise_std"], row["lambda"]), []).append(row)
    summary: list[dict] = []
    chosen: dict[float, float] = {}
    for (sigma, lam), group in sorted(groups.items()):
        costs = [100 * (base[(sigma, r["seed"])]["val_accuracy"] - r["val_accuracy"])
                 for r in group if (sigma, r["seed"]) in base]
        entry: dict = {"noise_std": sigma, "lambda": lam, "seeds": [r["seed"] for r in group],
                 "val_accuracy": mean_interval(r["val_accuracy"] for r in group).to_dict(),
                 "val_ridge_mse": mean_interval(r["val_ridge_mse"] for r in group).to_dict(),
                 "cost_points": mean_interval(costs).to_dict() if costs else None}
        summary.append(entry)
        if costs and entry["cost_points"]["mean"] <= max_cost and lam >= chosen.get(sigma, 0.0):
            chosen[sigma] = lam
    return {"groups": summary, "chosen_lambda": {str(s): lam for s, lam in chosen.items()}, "max_cost": max_cost,
            "val_accuracy_by_epoch": epoch_curve(rows)}


def main() -> None:
    args = get_args_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = profile_for(args.dataset)
    fraction = args.validation_fraction or profile.validation_fraction
    fit, val = split_images(args.dataset, fraction)
    mean_mse = float(F.mse_loss(fit.mean(0).expand_as(val), val))
    print(f"fit {len(fit)} / validation {len(val)} images; mean-image validation MSE {mean_mse:.5f}", flush=True)
    rows: list[dict] = []
    if args.reuse and args.json and args.json.exists():
        rows = json.loads(args.json.read_text())["rows"]
    done = {(r["noise_std"], r["lambda"], r["seed"]) for r in rows}
    sigmas = [float(v) for v in args.noise_stds.split(",")] if args.noise_stds else [profile.noise_std]
    print(f"{'sigma':>6} {'lambda':>7} {'seed':>4} {'val_acc':>7} {'test_acc':>8} {'ridge':>8} {'H_rel':>8} {'s':>6}",
          flush=True)
    for sigma in sigmas:
        for lam in (float(v) for v in args.lambdas.split(",")):
            for seed in (int(v) for v in args.seeds.split(",")):
                if (sigma, lam, seed) in done:
                    continue
                started = time.perf_counter()
                out = args.out / f"sigma{sigma}-lam{lam:g}-seed{seed}"
                result = train(TrainConfig(
                    dataset=args.dataset, out_dir=out, width=args.width, epochs=args.epochs, noise_std=sigma,
                    seed=seed, validation_fraction=fraction, progress=False,
                    cem=CEMConfig(lam=lam, loss_form=args.cem_loss, lr_coupling=args.cem_lr_coupling),
                ))
                row = {"noise_std": result.manifest.noise_std, "lambda": lam, "seed": seed,
                       "val_accuracy": result.metrics.val_accuracy, "test_accuracy": result.accuracy,
                       "val_ridge_mse": probe_ridge(out, fit, val, seed),
                       "entropy_bound": result.metrics.entropy_bound,
                       "val_accuracy_by_epoch": val_curve(out),
                       "train_seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(
                    f"{row['noise_std']:6g} {lam:7g} {seed:4d} {row['val_accuracy']:7.4f} {row['test_accuracy']:8.4f} "
                    f"{row['val_ridge_mse']:8.5f} {row['entropy_bound'] or float('nan'):8.2f} "
                    f"{row['train_seconds']:6.1f}",
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps({"rows": rows}, indent=1))
    summary = summarise(rows, args.max_cost)
    print(f"\n{'sigma':>6} {'lambda':>7} {'val accuracy %':>16} {'cost (points)':>16} {'val ridge MSE':>20}")
    for g in summary["groups"]:
        fmt = lambda e, spec, scale=1.0: "—" if e is None else (  # noqa: E731
            f"{e['mean'] * scale:{spec}}" + ("" if e["ci95"] is None else f" ± {e['ci95'] * scale:{spec}}"))
        print(f"{g['noise_std']:6g} {g['lambda']:7g} {fmt(g['val_accuracy'], '.2f', 100):>16} "
              f"{fmt(g['cost_points'], '.2f'):>16} {fmt(g['val_ridge_mse'], '.5f'):>20}")
    print(f"\nchosen λ (largest with mean validation cost ≤ {args.max_cost} points): {summary['chosen_lambda']}")
    for sigma, curve in summary["val_accuracy_by_epoch"].items():
        marks = ", ".join(f"epoch {e}: {100 * c['mean']:.2f}"
                          + ("" if c["ci95"] is None else f" ± {100 * c['ci95']:.2f}") for e, c in curve.items())
        print(f"σ = {sigma}, λ = 0, validation accuracy %: {marks}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "mean_image_val_mse": mean_mse}, indent=1))


if __name__ == "__main__":
    main()
