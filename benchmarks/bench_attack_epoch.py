"""Seconds per epoch of the decoder attack's training step, in the default memory layout and in channels_last.

The audit's decoder attack trains the paper's decoding network (8 residual
blocks of 64 channels, ``cem.models.InversionNetwork``) with Adam on features in
memory. This times whole epochs of exactly that step on digits-shaped data
(features (8, 8, 8), images 1x32x32; the train column's 1,132 fitting images at
its batch of 70), with random values: the time does not depend on them. Layouts
alternate epoch by epoch in one process so load drift hits both alike; medians
over ``--epochs`` timed epochs each, after one untimed warm-up epoch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attack_epoch.py --epochs 4 [--threads 1] [--compile] [--json]

``--channels`` and ``--blocks`` time another size of the network (the demo's
fast attacker: ``--channels 16 --blocks 4``), ``--batch`` another batch (the
attack's own rule gives 17 on the train column since 2026-12-01).

``--compile`` adds channels-last under ``torch.compile`` (inductor), whose
warm-up epoch includes the compilation; its seconds are printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cem.models.inversion import InversionConfig, InversionNetwork

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def make_trainer(layout: torch.memory_format, features: torch.Tensor, images: torch.Tensor,
                 batch: int, compiled: bool = False, *, channels: int, blocks: int) -> Callable[[], None]:
    """One epoch of the attack's training step in ``layout`` (under ``torch.compile`` if asked), as a callable."""
    torch.manual_seed(0)
    config = InversionConfig.for_features(tuple(features.shape[1:]), images.shape[1], images.shape[-1],
                                          num_blocks=blocks, channels=channels)
    network = InversionNetwork(config).to(memory_format=layout)
    optimizer = torch.optim.Adam(network.parameters(), lr=5e-3, weight_decay=1e-4)
    inputs = features.contiguous(memory_format=layout)
    forward = torch.compile(network) if compiled else network

    def epoch() -> None:
        for rows in torch.randperm(len(inputs)).split(batch):
            loss = F.mse_loss(forward(inputs[rows]), images[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per layout")
    parser.add_argument("--samples", type=int, default=1132)
    parser.add_argument("--batch", type=int, default=70)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--channels", type=int, default=InversionConfig.channels, help="default: the paper's")
    parser.add_argument("--blocks", type=int, default=InversionConfig.num_blocks, help="default: the paper's")
    parser.add_argument("--compile", action="store_true", help="also time channels-last under torch.compile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features, images = torch.rand(args.samples, 8, 8, 8), torch.rand(args.samples, 1, 32, 32)
    size = {"channels": args.channels, "blocks": args.blocks}
    trainers = {name: make_trainer(layout, features, images, args.batch, **size) for name, layout in LAYOUTS.items()}
    if args.compile:
        trainers["channels_last+compile"] = make_trainer(torch.channels_last, features, images, args.batch,
                                                         compiled=True, **size)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    warm_up: dict[str, float] = {}
    for name, epoch in trainers.items():
        start = time.perf_counter()
        epoch()  # warm-up: allocator, kernels, and the compilation where asked
        warm_up[name] = time.perf_counter() - start
    for round_ in range(args.epochs):
        order = list(trainers) if round_ % 2 == 0 else list(reversed(trainers))
        for name in order:
            start = time.perf_counter()
            trainers[name]()
            times[name].append(time.perf_counter() - start)
            print(f"round {round_ + 1}/{args.epochs}: {name} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(times["contiguous"])
    rows = [{"layout": name, "median_s": statistics.median(t), "epochs_s": t, "warm_up_s": warm_up[name],
             "vs_contiguous": statistics.median(t) / base} for name, t in times.items()]
    environment = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    print(f"{args.samples} samples, batch {args.batch}, network {args.channels} channels x {args.blocks} blocks; "
          f"{environment}")
    print("| layout | warm-up epoch (s) | epoch median (s) | every epoch (s) | vs contiguous |")
    print("|---|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['layout']} | {r['warm_up_s']:.2f} | {r['median_s']:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in r['epochs_s'])} | {r['vs_contiguous']:.3f}x |")
    if args.json:
        print(json.dumps({"environment": environment, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
