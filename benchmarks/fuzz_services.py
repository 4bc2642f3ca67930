"""Seeded fuzzing of ``cem-cloud`` and ``cem-tap``: hostile traffic, direct and through the tap.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_services.py --messages 10000 --seed 1 [--json]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_services.py --seed 10 --case 67   # replay one case
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fuzz_services.py --seed 1 --case 36 --repeat 6000   # and count

Starts a real ``cem-cloud`` and a real ``cem-tap`` in front of it, sends ``--messages`` generated
cases (random bytes, mutated and protobuf-shaped messages, hostile values and ids, messages just
over the limit, unknown methods, streams mixing good and bad messages) on both paths, each
``--passes`` times, and checks statuses, parity between the paths, RSS after the warm-up, health
and a valid request afterwards, the tap's captures and both exit codes. The generator, runner and
checks live in the ``fuzzing`` package next to this script (see its docstring); tests/fuzz runs a
bounded version and docs/fuzz.md records a long run. Exit code 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from fuzzing import (
    CLASS_WEIGHTS,
    Caller,
    RunConfig,
    Target,
    format_table,
    fuzz_services,
    make_case,
    service_env,
    start_cloud,
    start_tap,
    target_for,
)
from untrained_bundle import write_untrained_digits_bundle


def replay(target: Target, seed: int, index: int, classes: tuple[str, ...], addresses: dict[str, str],
           repeat: int = 1) -> None:
    """Print one case and its outcome on each path (the reproducer for a problem the table reports).

    With ``repeat`` > 1 the case is sent that many times per path, one call at a time, and each
    path's outcomes are counted: the reproducer for a problem that shows only now and then.
    """
    case = make_case(target, seed, index, classes)
    print(case.describe(), case.variant, "expected", sorted(c.name for c in case.expected))
    for position, payload in enumerate(case.payloads):
        print(f"  message {position}: {len(payload)} bytes, head {payload[:48].hex()}")
    for path, address in addresses.items():
        caller = Caller(address)
        outcomes = [caller.call(case) for _ in range(repeat)]
        caller.close()
        if repeat == 1:
            outcome = outcomes[0]
            print(f"  {path}: {outcome.code.name} {outcome.details[:300]!r} answered={len(outcome.answered)}")
            continue
        counts = Counter(f"{o.code.name} answered={len(o.answered)}" for o in outcomes)
        details = {o.code.name: o.details[:300] for o in reversed(outcomes)}  # the first of each code
        print(f"  {path}: {repeat} calls: {dict(counts.most_common())} {details}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--messages", type=int, default=10_000, help="distinct cases (one call per path each, per pass)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a fresh untrained digits bundle)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-message-bytes", type=int, default=256 * 1024)
    parser.add_argument("--passes", type=int, default=2, help="send every case this many times")
    parser.add_argument("--warmup", type=int, help="sends before the RSS baseline (default: all passes but the last)")
    parser.add_argument("--rss-tolerance-mb", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4, help="cases in flight at once")
    parser.add_argument("--malloc-arena-max", type=int, help="MALLOC_ARENA_MAX for cloud and tap (default: glibc's)")
    parser.add_argument("--classes", default=",".join(CLASS_WEIGHTS),
                        help="comma-separated message classes to draw from (default: all, weighted as CLASS_WEIGHTS)")
    parser.add_argument("--case", type=int, help="replay only this case (printed in detail) and exit")
    parser.add_argument("--repeat", type=int, default=1, help="with --case: send it this many times per path and count")
    parser.add_argument("--keep", type=Path, help="work folder to keep (logs, captures) instead of a temporary one")
    parser.add_argument("--json", action="store_true", help="last stdout line: the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = args.bundle or write_untrained_digits_bundle(work / "bundle", note="fuzz, untrained")
        target = target_for(bundle, args.max_batch, args.max_message_bytes)
        classes = tuple(name for name in args.classes.split(",") if name)
        unknown = sorted(set(classes) - set(CLASS_WEIGHTS))
        if unknown:
            raise SystemExit(f"fuzz_services: expected classes from {list(CLASS_WEIGHTS)}, got {unknown}")
        if args.case is not None:
            env = service_env(args.malloc_arena_max)
            with start_cloud(bundle, target, work, env) as cloud, start_tap(cloud.address, target, work, env) as tap:
                replay(
                    target, args.seed, args.case, classes, {"direct": cloud.address, "tap": tap.address}, args.repeat
                )
            return 0
        warmup = args.messages * (args.passes - 1) if args.warmup is None else args.warmup
        config = RunConfig(seed=args.seed, cases=args.messages, passes=args.passes, warmup=warmup,
                           rss_tolerance_kb=int(args.rss_tolerance_mb * 1024), classes=classes,
                           concurrency=args.concurrency, malloc_arena_max=args.malloc_arena_max,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
        report = fuzz_services(bundle, target, work, config)
    print(f"cem-cloud + cem-tap fuzz: max batch {target.max_batch}, max message {target.max_message_bytes} B, "
          f"features {target.feature_shape}; cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(format_table(report))
    if args.json:
        print(json.dumps(report.to_dict()))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
