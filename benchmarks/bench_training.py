"""Wall time of one digits training epoch with and without CEM, measured side by side.

"with CEM" is everything CEM adds to an epoch: the per-batch L_C (assignment,
Eq. 5-6 updates, Eq. 7) inside the single backward, caching the epoch's
features, and the end-of-epoch mixture refit. "without" is the same loop with
the plug-in absent. The two run interleaved (AB, BA, ...) from identical
starting weights; the table reports medians and the ratio of medians.

    .venv/bin/python benchmarks/bench_training.py --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader

from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig
from training.cem_plugin import CEMConfig, CEMRegularizer
from training.config import TrainConfig, profile_for
from training.loops import FeatureCache, train_one_epoch
from training.trainer import build_defenses


def make_runner(with_cem: bool, args: argparse.Namespace):
    """A closure that runs one epoch (and, with CEM, the refit) and returns its wall time."""
    torch.manual_seed(0)
    train_set, info = load_dataset("digits", "train")
    stack = build_defenses(TrainConfig(noise_std=args.noise_std))
    config = stack.configure_model(SplitModelConfig(width=args.width, in_channels=1, mean=info.mean, std=info.std))
    model = SplitModel(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(train_set, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    cem, cache = None, None
    if with_cem:
        cem = CEMRegularizer(CEMConfig(lam=args.cem_lambda, k=args.cem_k), noise_std=args.noise_std,
                             num_classes=info.num_classes, dataset_size=len(train_set), image_dim=32 * 32)
        cache = FeatureCache(len(train_set))

    def run_epoch() -> float:
        started = time.perf_counter()
        if cache is not None:
            cache.clear()
        weight = cem.weight(optimizer.param_groups[0]["lr"]) if cem is not None and cem.mixture is not None else 0.0
        train_one_epoch(model, loader, optimizer, obfuscation=stack.obfuscation(),
                        defenses=stack, cem=cem, cem_weight=weight, generator=generator,
                        device=torch.device("cpu"), cache=cache)
        if cem is not None and cache is not None:
            cem.refit(*cache.tensors(), generator=generator)
        return time.perf_counter() - started

    return run_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed epochs per variant")
    parser.add_argument("--width", type=float, default=profile_for("digits").width)
    parser.add_argument("--cem-lambda", type=float, default=profile_for("digits").cem_lambda)
    parser.add_argument("--cem-k", type=int, default=3)
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runners = {"without CEM": make_runner(False, args), "with CEM": make_runner(True, args)}
    for run in runners.values():  # warm-up; gives the CEM runner its first mixture
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            times[name].append(runners[name]())
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["with CEM"] / medians["without CEM"]
    print(f"digits epoch (1258 images, batch 128, width {args.width}, threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats)")
    print(f"{'variant':<12} {'median s':>9} {'min s':>8} {'max s':>8}")
    for name, values in times.items():
        print(f"{name:<12} {medians[name]:9.3f} {min(values):8.3f} {max(values):8.3f}")
    print(f"ratio with/without (medians): {ratio:.3f}x")
    if args.json:
        print(json.dumps({"median_s": medians, "ratio": ratio, "repeats": args.repeats, "width": args.width,
                          "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
