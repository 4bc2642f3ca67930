"""Seconds per epoch of the decoder attack on one process or N data-parallel ones (``cem-attack --nproc N``).

Runs the attack's own ``train_decoder_attack`` (no convergence check) on digits-shaped
data: the ``train`` column's 1,132 fitting and 126 validation images, features (8, 8, 8),
images 1x32x32, random values (the time does not depend on them), so the attack's batch
rule gives its global batch of 17 (9 + 8 rows on two processes). An epoch is the training
pass plus the validation MSE that selects the checkpoint (``epoch_s`` in the attack's
history); the first epoch is a warm-up and left out of the median. With ``--nproc N > 1``
it re-launches itself through torchrun (gloo on CPU) and rank 0 reports; its CPU time is
rank 0's alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attack_nproc.py --epochs 4 --json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attack_nproc.py --epochs 4 --nproc 2 --json

``--channels``/``--blocks`` time another network (default: the paper's, 64 channels x 8 blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from attacker.attacks import AttackSplit, DecoderAttackConfig, FeatureSet, train_decoder_attack
from cem.distributed import process_group
from cem.launch import check_nproc, inside_launcher
from cem.obfuscation import ObfuscationConfig


def synthetic_split(fit: int, val: int) -> AttackSplit:
    """Random digits-shaped data: features (N, 8, 8, 8) and images (N, 1, 32, 32) in [0, 1]."""
    generator = torch.Generator().manual_seed(0)

    def part(n: int) -> FeatureSet:
        return FeatureSet(torch.rand(n, 1, 32, 32, generator=generator), torch.rand(n, 8, 8, 8, generator=generator))

    validation = part(val)
    return AttackSplit(mode="train", fit=part(fit), val=validation, eval=validation)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--nproc", type=int, default=1, help="data-parallel processes (re-launches through torchrun)")
    parser.add_argument("--samples", type=int, default=1132, help="fitting images")
    parser.add_argument("--val", type=int, default=126, help="validation images")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--channels", type=int, default=DecoderAttackConfig.channels, help="default: the paper's")
    parser.add_argument("--blocks", type=int, default=DecoderAttackConfig.num_blocks, help="default: the paper's")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    check_nproc(args.nproc)
    if args.nproc > 1 and not inside_launcher():  # as cem.launch.relaunch does, with this script as the worker
        from torch.distributed import run as torchrun

        launch_args = torchrun.parse_args(["--standalone", f"--nproc-per-node={args.nproc}", __file__])
        launch_args.training_script_args = sys.argv[1:]  # after parsing: torchrun would take --nproc for its own
        torchrun.run(launch_args)
        return 0
    torch.set_num_threads(args.threads)
    split = synthetic_split(args.samples, args.val)
    config = DecoderAttackConfig(epochs=args.epochs + 1, convergence_check=False, channels=args.channels,
                                 num_blocks=args.blocks)
    with process_group(torch.device("cpu")) as (distributed, _):
        wall, cpu = time.perf_counter(), time.process_time()
        trained = train_decoder_attack(split, ObfuscationConfig(noise_std=0.1), config, seed=0,
                                       distributed=distributed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not distributed.is_main:
        return 0
    epochs = [float(row["epoch_s"] or 0.0) for row in trained.history]
    result = {
        "nproc": distributed.world_size, "backend": distributed.backend,
        "median_epoch_s": statistics.median(epochs[1:]), "epochs_s": epochs,
        "rank0_cpu_per_epoch_s": cpu / len(epochs), "attack_s": wall,
        "best_val_mse": trained.best_val_mse(),
        "environment": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
    }
    print(f"{distributed.world_size} process(es), {args.samples} fitting images, network {args.channels} channels x "
          f"{args.blocks} blocks; {result['environment']}")
    print(f"median epoch {result['median_epoch_s']:.2f} s (every epoch: {', '.join(f'{t:.2f}' for t in epochs)}; "
          f"the first is the warm-up), rank 0 CPU per epoch {result['rank0_cpu_per_epoch_s']:.2f} s, "
          f"whole attack {wall:.1f} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
