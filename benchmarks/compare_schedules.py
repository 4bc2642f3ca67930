"""The decoder attack under its two learning-rate schedules, side by side on the same bundles: what each reached
and what each cost, convergence check included.

``cosine`` decays over the whole run, so its half-budget check is a second run of
half the epochs (1.5x a run); ``wsd`` holds the rate and decays over the last
fifth, so the half run branches off the full one and costs its own decay only
(about 1.1x; attacker.attacks.schedule). A schedule is only worth its saving if
it attacks as well: this runs ``cem-attack`` on every bundle under every
schedule (both columns, ``train`` and ``infer``), the runs interleaved over
``--jobs`` processes of ``--threads`` torch threads each, and prints per column
the test MSE, the best validation MSE, the convergence check's doubling gain
(flagged above 2 %) and the attack's seconds, then the ratios of ``wsd`` to
``cosine`` per bundle and column.

    .venv/bin/python benchmarks/compare_schedules.py --bundles B1,B2 --out runs/schedules [--json]

The defaults are the demo's attacker (demo/profiles.py ``fast``: 16 channels, 4
blocks, 100 epochs, at least 5,600 optimizer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attacker.attack_names import SCHEDULES
from attacker.attacks.schedule import COSINE, WSD
from cem.convergence import CONVERGENCE_TOLERANCE

COLUMNS = ("train", "infer")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", required=True, help="comma-separated bundle folders")
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--min-steps", type=int, default=5600)
    parser.add_argument("--network-channels", type=int, default=16)
    parser.add_argument("--network-blocks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="attacks at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per attack")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    return parser


def attack(args: argparse.Namespace, bundle: Path, schedule: str) -> dict[str, Any]:
    """One ``cem-attack`` run; its per-column numbers."""
    out = args.out / f"{bundle.name}-{schedule}"
    command = [sys.executable, "-m", "attacker.cli", "--bundle", str(bundle), "--attack", "decoder",
               "--epochs", str(args.epochs), "--min-steps", str(args.min_steps), "--schedule", schedule,
               "--network-channels", str(args.network_channels), "--network-blocks", str(args.network_blocks),
               "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log:
        subprocess.run(command, stdout=log, stderr=log, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    metrics = json.loads((out / "metrics.json").read_text())
    row: dict[str, Any] = {"bundle": bundle.name, "schedule": schedule}
    for column in COLUMNS:
        detail = metrics["details"][column]
        row[column] = {"test_mse": metrics["metrics"][column]["mse"], "best_val_mse": min(detail["val_mse"]),
                       "doubling_gain": detail.get("doubling_gain"), "epochs": detail["epochs"],
                       "best_epoch": detail["best_epoch"], "attack_s": detail["attack_s"]}
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| bundle | schedule | column | epochs (best) | test MSE | best val MSE | doubling gain | attack s |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        for column in COLUMNS:
            c = row[column]
            gain = c["doubling_gain"]
            flag = " †" if gain is not None and gain > CONVERGENCE_TOLERANCE else ""
            gain_text = "—" if gain is None else f"{100 * gain:+.1f} %{flag}"
            lines.append(f"| {row['bundle']} | {row['schedule']} | {column} | {c['epochs']} ({c['best_epoch']}) | "
                         f"{c['test_mse']:.5f} | {c['best_val_mse']:.5f} | {gain_text} | {c['attack_s']:.0f} |")
    return "\n".join(lines)


def format_ratios(rows: list[dict[str, Any]]) -> str:
    """``wsd`` over ``cosine`` per bundle and column: test MSE, best validation MSE, seconds."""
    by = {(row["bundle"], row["schedule"]): row for row in rows}
    lines = ["| bundle | column | test MSE wsd/cosine | best val MSE wsd/cosine | attack s wsd/cosine |",
             "|---|---|---:|---:|---:|"]
    for bundle in dict.fromkeys(row["bundle"] for row in rows):
        if (bundle, WSD) not in by or (bundle, COSINE) not in by:
            continue
        for column in COLUMNS:
            w, c = by[bundle, WSD][column], by[bundle, COSINE][column]
            lines.append(f"| {bundle} | {column} | {w['test_mse'] / c['test_mse']:.3f} | "
                         f"{w['best_val_mse'] / c['best_val_mse']:.3f} | {w['attack_s'] / c['attack_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    bundles = [Path(b) for b in args.bundles.split(",") if b]
    schedules = [s for s in args.schedules.split(",") if s]
    unknown = sorted(set(schedules) - set(SCHEDULES))
    if unknown:
        print(f"unknown schedules {unknown}; expected some of {SCHEDULES}", file=sys.stderr)
        return 2
    runs = [(bundle, schedule) for bundle in bundles for schedule in schedules]  # interleaved: pairs run together
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(attack, args, bundle, schedule) for bundle, schedule in runs]
        rows = []
        for done, future in enumerate(futures, 1):
            rows.append(future.result())
            print(f"[{done}/{len(futures)}] {rows[-1]['bundle']} {rows[-1]['schedule']}", file=sys.stderr, flush=True)
    print(format_rows(rows))
    print()
    print(format_ratios(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
