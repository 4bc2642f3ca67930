"""``cem-demo``: the whole story on an embedded data set (digits; ``--dataset mnist5k``), in one command.

Trains σ-only and σ+CEM models, serves each behind a channel tap, sends the test
split from the edge through the tap (with sample ids, so captured traffic can be
scored), runs inversion audits through the REST API (the decoder attack; the
``paper`` profile adds the GAN attack), and prints the comparison table, with
how each attack trained, and the paths of the HTML reports. Everything runs on
loopback and is shut down at the end, on error, and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from attacker.client import ATTACKS
from cem.cli import EXIT_INTERRUPTED, run_cli
from demo.pipeline import DemoConfig, run_demo
from demo.profiles import DEMO_DATASETS, PROFILES


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast",
                        help="fast: about seven minutes on 2 CPU cores (digits); paper: every default (long)")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="folder for bundles, captures, logs, reports"
    )
    parser.add_argument("--dataset", choices=DEMO_DATASETS, default=DemoConfig.dataset,
                        help="digits: the fast default; mnist5k: real 28x28 handwriting, longer (README)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-std", type=float, default=0.1, help="σ of the edge's Gaussian noise")
    parser.add_argument("--attack", action="append", choices=ATTACKS,
                        help="repeatable; default: the profile's (fast: decoder; paper: both)")
    parser.add_argument("--keep-running", action="store_true", help="leave the services up until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    return parser


def _record_interrupts() -> threading.Event:
    """Make Ctrl-C raise KeyboardInterrupt, and remember it.

    Installed explicitly because a process started with SIGINT ignored (anything launched in the
    background by a non-interactive shell: ``nohup``, ``cmd &`` in CI scripts) inherits SIG_IGN and
    Python then installs no handler, so the demo could not be interrupted. Remembering it also
    ends a run with status 130 when Python dropped the exception (raised inside a finaliser)."""
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    return interrupted


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(out_dir=args.out, profile=args.profile, dataset=args.dataset, seed=args.seed,
                        noise_std=args.noise_std,
                        attacks=tuple(args.attack) if args.attack else None, keep_running=args.keep_running)
    interrupted = _record_interrupts()
    try:
        result = run_demo(config)
    except KeyboardInterrupt:
        interrupted.set()
        result = None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # A swallowed KeyboardInterrupt still ends the run as interrupted; with --keep-running,
    # Ctrl-C after the results is the normal way to stop, so the results are printed.
    if result is None or (interrupted.is_set() and not config.keep_running):
        print("cem-demo: interrupted; every service was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.table)
    print()
    for label, path in sorted(result.reports.items()):
        print(f"report {label}: {path}")
    print(f"finished in {result.duration_s:.0f} s; summary in {args.out / 'summary.json'}")
    if args.json:
        print(json.dumps(result.to_dict()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
