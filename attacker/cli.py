"""``cem-attack``: run one inversion attack on a bundle and write its metrics and a PNG grid.

    cem-attack --bundle runs/digits --attack decoder --out runs/attack [--epochs 50] [--json]
               [--network-channels C] [--network-blocks B] [--min-steps N]
    cem-attack --nproc 2 --threads 1 --bundle runs/digits --attack decoder --out runs/attack   # 2 processes
    torchrun --nproc_per_node 2 $(which cem-attack) --bundle runs/digits --out runs/attack       # the same, by hand

Writes ``OUT/metrics.json`` (the full audit result) and ``OUT/reconstructions.png``
(originals above reconstructions: the ``train`` block, then the ``infer`` block).
Progress goes to stderr; with ``--json`` the last stdout line is
``{"attack", "train": {"mse", "psnr", "psnr_batch", "ssim", "ssim_ref", "mse_native", "n"}, "infer": {...},
"bound": {"kind", "xi", "entropy_bound", ..., "relative": {...}, "warnings": [...]}, "metrics_path", "grid_path"}``
(``bound.kind`` is ``estimate`` or ``relative``, see ``cem.bounds``); a bound the bundle does not record is ``null``.
Exit status 2 for a missing or corrupt bundle or a wrong data set, 1 when the results
cannot be written (``cem.cli``). Under torchrun (or ``--nproc N``) the attack trains
data-parallel (``attacker.attacks.parallel``) and only rank 0 shows progress, logs,
writes and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from attacker.attacks import ATTACKS, DecoderAttackConfig, OptimizeAttackConfig
from attacker.audit import AuditSpec, run_audit
from cem.bundle import load_manifest
from cem.cli import run_cli
from cem.data import available_datasets
from cem.devices import DEVICE_CHOICES, resolve_device
from cem.distributed import launch_env_rank, process_group
from cem.launch import check_devices, exit_command, relaunch, run_or_relaunch
from cem.threads import THREADS_HELP, apply_threads

logger = logging.getLogger("attacker.cli")

METRICS_FILE = "metrics.json"
GRID_FILE = "reconstructions.png"
PROGRESS_STEPS = 100
PAPER_NETWORK = DecoderAttackConfig()  # the decoding network of paper S.3: the attack's defaults
WORKER_MODULE = "attacker.cli"  # what ``--nproc N`` starts N of, through torchrun (``cem.launch``)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cem-attack", description="Model inversion attack on a split-model bundle.")
    parser.add_argument(
        "--bundle", required=True, type=Path, help="bundle folder (manifest.json + encoder.safetensors)"
    )
    parser.add_argument("--attack", choices=ATTACKS, default=AuditSpec.attack)
    parser.add_argument("--dataset", choices=available_datasets(), default=AuditSpec.dataset,
                        help="default: the bundle's data set")
    parser.add_argument("--data-dir", type=Path, default=AuditSpec.data_dir, help="where file-based data sets live")
    parser.add_argument("--epochs", type=int, default=AuditSpec.epochs,
                        help="default: 50 (decoder, decoder+optimize) or 150 (gan, after ceil(epochs/3) decoder "
                             "epochs); not for optimize")
    parser.add_argument("--steps", type=int, default=AuditSpec.optimize_steps,
                        help=f"optimisation steps per image of optimize and decoder+optimize (default: "
                             f"{OptimizeAttackConfig().steps})")
    parser.add_argument("--network-channels", type=int, default=AuditSpec.network_channels, metavar="C",
                        help="width of the attacker's decoding network, >= 1 (default: "
                             f"{PAPER_NETWORK.channels}, the paper's decoding network)")
    parser.add_argument("--network-blocks", type=int, default=AuditSpec.network_blocks, metavar="B",
                        help="residual blocks of the attacker's decoding network, >= 0 (default: "
                             f"{PAPER_NETWORK.num_blocks}, the paper's decoding network)")
    parser.add_argument("--min-steps", type=int, default=AuditSpec.min_steps, metavar="N",
                        help="raise the decoder's epochs until its run takes at least N optimizer steps (small "
                             "attacker sets have few steps an epoch); also decoder+optimize's decoder and the gan's "
                             f"decoder pre-training; not for optimize (default: {PAPER_NETWORK.min_steps}, the epochs "
                             "as given)")
    parser.add_argument("--seed", type=int, default=AuditSpec.seed)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=AuditSpec.device)
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP + "; per process")
    parser.add_argument("--nproc", type=int, default=1,
                        help="run the attack data-parallel on this many local processes (re-launches itself through "
                             "torchrun; gloo on CPU, NCCL with one GPU per process); the batch sizes stay global")
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for metrics.json and reconstructions.png"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")
    return parser


def build_spec(args: argparse.Namespace) -> AuditSpec:
    return AuditSpec(
        bundle_dir=args.bundle, attack=args.attack, dataset=args.dataset, data_dir=args.data_dir,
        epochs=args.epochs, seed=args.seed, device=args.device,
        network_channels=args.network_channels, network_blocks=args.network_blocks, optimize_steps=args.steps,
        min_steps=args.min_steps,
    )


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    spec = build_spec(args)
    with process_group(resolve_device(spec.device)) as (distributed, _):
        main = distributed.is_main
        with tqdm(total=PROGRESS_STEPS, desc=f"{args.attack} attack", file=sys.stderr, unit="%",
                  disable=not main) as bar:

            def show(fraction: float, message: str) -> None:
                bar.set_postfix_str(message, refresh=False)
                bar.update(max(0, round(fraction * PROGRESS_STEPS) - bar.n))

            result = run_audit(spec, progress=show if main else None, distributed=distributed)
    if not main:  # every rank holds rank 0's result; one writes and prints it
        return 0
    metrics_path, grid_path = args.out / METRICS_FILE, args.out / GRID_FILE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
        grid_path.write_bytes(result.reconstructions_png)
    except OSError as exc:
        raise OSError(f"cannot write the results to {args.out}: {exc}") from exc
    for mode in ("train", "infer"):
        m = result.metrics[mode]
        logger.info("%s: mse %.5f psnr %.2f dB ssim %.4f ssim_ref %.4f (n=%d)", mode, m["mse"],
                    m["psnr"], m["ssim"], m["ssim_ref"], m["n"])
    if result.bound is not None:
        logger.info("bound: %s ξ %.3g%s", result.bound["kind"], result.bound["xi"],
                    "".join(f"; {w}" for w in result.bound["warnings"]))
    if args.json:
        summary = {
            "attack": result.attack,
            "train": result.metrics["train"],
            "infer": result.metrics["infer"],
            "bound": result.bound,
            "metrics_path": str(metrics_path),
            "grid_path": str(grid_path),
        }
        print(json.dumps(summary), flush=True)
    return 0


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """``--nproc N``: check the arguments (and that the bundle has a manifest) once here, then run N workers
    through torchrun."""
    spec = build_spec(args)
    load_manifest(spec.bundle_dir)
    check_devices(args.nproc, resolve_device(spec.device))
    return relaunch(args.nproc, argv, WORKER_MODULE)


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if launch_env_rank() == 0 else logging.WARNING  # ranks > 0: warnings and errors only
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def body() -> int:
        return run_or_relaunch(args.nproc, argv, run=lambda: run(args), launch=lambda workers: launch(args, workers))

    return run_cli(parser.prog, body)


def entry() -> NoReturn:
    """``cem-attack`` and ``python -m attacker.cli`` (torchrun's workers): ``main``, then ``exit_command``."""
    exit_command(main())


if __name__ == "__main__":
    entry()
