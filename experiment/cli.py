"""``cem-experiment``: run a grid of trainings and attacks from a TOML spec, and report it as the paper's Table 1.

    cem-experiment run experiments/smoke.toml --out runs/smoke [--jobs 2] [--threads 1] [--device cpu]
    cem-experiment run experiments/digits-table1.toml --out runs/t1 --dry-run
    cem-experiment run experiments/digits-table1.toml --out runs/t1 --rows Bottleneck --attacks decoder
    cem-experiment report runs/smoke [--json] [--attacks decoder]

``run`` checks the whole spec first (data sets, archs, and, in a probe process,
every defense and attack setting as cem-train and cem-attack parse them) and
exits 2 naming what it refuses, before any cell runs. It then runs only the cells
not stored in DIR yet (an interrupted or changed run resumes), each through the
real CLI in a child process, and exits 1 if any cell failed (its log is named).
``--dry-run`` lists every cell with its key and whether it is stored, and runs
nothing. ``--rows``, ``--attacks`` and ``--seeds`` run a slice of the grid now (the
keys are the full grid's, so the slices add up to it); ``--reuse-from DIR`` copies
the cells another run already stored under the same keys. ``report`` writes
DIR/report/ (table1.md/.csv/.json, the plots as PNG and SVG, index.html) from
the stored cells only (``--attacks``: only the attacks named). docs/experiments.md
has the spec's keys and the cell key rule.

Exit statuses are ``cem.cli``'s (0, 1, 2; 130 after Ctrl-C), and 143 (128 +
SIGTERM, as shells report a terminated process) after a SIGTERM, so a scheduler
that stopped the run can tell it from an interrupt by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from cem.cli import run_cli
from cem.errors import CEMError, ConfigError
from experiment.cells import AttackCell, Plan, TrainCell, expand_plan
from experiment.cost import cost_kind, grid_cost, rerun_estimate, run_estimate
from experiment.probe import run_probe
from experiment.runner import DEVICE_CHOICES, GridRunner, RunOptions, RunSummary, left_out_attacks, resolve_options
from experiment.spec import load_spec
from experiment.store import CellStore

logger = logging.getLogger("experiment.cli")

EXIT_TERMINATED = 128 + int(signal.SIGTERM)  # cem.cli has 130 for Ctrl-C; the same shell convention for SIGTERM


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cem-experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the cells of a spec that are not stored yet")
    run.add_argument("spec", type=Path, help="the experiment's TOML spec (docs/experiments.md)")
    run.add_argument("--out", type=Path, required=True, help="output folder (cells, bundles, attacks, logs)")
    run.add_argument("--jobs", type=int, default=None,
                     help="cells at once, each a child process (default: 1 on CPU, one per visible GPU on CUDA)")
    run.add_argument("--dry-run", action="store_true", help="list every cell, its key and whether it is stored")
    run.add_argument("--rows", type=_names, default=(), metavar="LABEL,...",
                     help="run only these rows' cells now (the report still lays out the whole spec)")
    run.add_argument("--attacks", type=_names, default=(), metavar="NAME,...",
                     help="run only these attacks (and the trainings they need) now; the other attacks stored "
                          "on a training retrained into another model (in this run or an earlier one) run again too")
    run.add_argument("--seeds", type=_seeds, default=(), metavar="N,...", help="run only these seeds' cells now")
    run.add_argument("--reuse-from", type=Path, action="append", default=[], metavar="DIR",
                     help="copy cells this run needs from another run's folder instead of running them (same key: "
                          "the same settings); repeatable")
    run.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                     help="the cells' device; on CUDA each job gets one GPU through CUDA_VISIBLE_DEVICES")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per cell (default: OMP_NUM_THREADS, else the idle CPUs shared by the jobs)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="log what the runner does")
    report = commands.add_parser("report", help="Table 1, plots and an HTML page from the stored cells")
    report.add_argument("dir", type=Path, help="the output folder of `cem-experiment run`")
    report.add_argument("--attacks", type=_names, default=(), metavar="NAME,...",
                        help="report only these attacks, as if the spec named no other (a grid whose other attacks "
                             "are not run: no empty columns, the headline over these); into the same DIR/report")
    report.add_argument("--json", action="store_true", help="print table1.json as one JSON line at the end")
    report.add_argument("-v", "--verbose", action="store_true", help="log what the report does")
    return parser


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(seed) for seed in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def adopt_cells(plan: Plan, store: CellStore, sources: list[CellStore]) -> int:
    """Copy every cell of ``plan`` that ``store`` lacks and one of ``sources`` holds; how many were copied."""
    adopted = 0
    for cell in plan.runnable():  # a train cell before its attacks: an attack is adopted only onto its bundle
        if store.load(cell.kind, cell.key) is None:
            adopted += any(store.adopt(source, cell.kind, cell.key) for source in sources)
    return adopted


def reusable_cells(plan: Plan, store: CellStore, sources: list[CellStore]) -> dict[tuple[str, str], CellStore]:
    """The (kind, key) of every cell ``adopt_cells`` would copy, with the folder it would come from, found without
    copying (``--dry-run``)."""
    planned: dict[str, Mapping[str, Any]] = {}  # train records it would adopt: their attacks follow them
    found: dict[tuple[str, str], CellStore] = {}
    for cell in plan.runnable():
        if store.load(cell.kind, cell.key) is not None:
            continue
        for source in sources:
            record = store.adoptable(source, cell.kind, cell.key, planned)
            if record is not None:
                found[(cell.kind, cell.key)] = source
                if cell.kind == "train":
                    planned[cell.key] = record
                break
    return found


def _trains_by_key(plan: Plan) -> dict[str, TrainCell]:
    return {cell.key: cell for cell in plan.train}


def print_dry_run(plan: Plan, store: CellStore, sources: list[CellStore], spec_plan: Plan) -> int:
    """One line per distinct cell: kind, key, ``cached``, ``reuse`` (``--reuse-from`` would copy it), ``to-run``
    or ``rebuild`` (its record is stored or would be copied, its bundle would not be there, and an attack to run
    needs it: it trains again), and what it is; the folder is judged as it will be after the copy. Then the counts,
    the cells to run priced at the medians of ``spec_plan``'s cells as the folder will hold them, and the stored
    attacks on the bundles it retrains (those ``--attacks`` leaves out too), which run again if a retrain is
    another model. The cells listed include the attacks ``--attacks`` left out that the run takes on
    (``GridRunner``), judged on the folder before the copy. Returns how many cells it listed."""
    trains = _trains_by_key(plan)
    copies = reusable_cells(plan, store, sources)
    runner = GridRunner(plan, store, RunOptions(progress=False), whole=spec_plan)
    done, rebuild = runner.plan_state(copies)
    cells = runner.plan.runnable()
    states = []
    for cell in cells:
        if cell.kind == "train" and cell.key in rebuild:
            state = "rebuild"
        elif (cell.kind, cell.key) in done:
            state = "reuse" if (cell.kind, cell.key) in copies else "cached"
        else:
            state = "to-run"
        states.append(state)
        what = (f"{cell.attack} on {trains[cell.train_key].describe()}" if isinstance(cell, AttackCell)
                else cell.describe())
        print(f"{cell.kind:<6} {cell.key}  {state:<7} {what}")
    to_run = Counter(cost_kind(cell) for cell, state in zip(cells, states, strict=True)
                     if state in ("to-run", "rebuild"))
    copied = f"{states.count('reuse')} to copy from --reuse-from, " if sources else ""
    print(f"{len(cells)} cells: {states.count('cached')} cached, {copied}{sum(to_run.values())} to run "
          f"({plan.name}; nothing was run)")
    records = store.records(spec_plan.runnable())
    for (kind, key), source in copies.items():  # priced as the folder will be: with the copied records
        records[(kind, key)] = source.load(kind, key)
    costs = grid_cost(spec_plan, records)
    print(run_estimate(to_run, costs))
    stored = [cell for cell in runner.plan.attack if (cell.kind, cell.key) in done] + runner.watched
    at_risk = Counter(cost_kind(cell) for cell in stored if cell.train_key in rebuild)
    if (rerun := rerun_estimate(at_risk, costs)) is not None:
        print(rerun)
    return len(cells)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: a KeyboardInterrupt, so everything that stops the run on Ctrl-C stops it the same way
    (children stopped, nothing half-done recorded), told apart only for the exit status."""


def _stop_on_sigterm() -> None:
    """SIGTERM stops the run like Ctrl-C (``Terminated``)."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)


def check_device_for_plan(plan: Plan, device: str) -> None:
    """A cell run with ``--nproc N > 1`` (``train.extra_args``, an attack's ``extra_args``) on CUDA needs N GPUs,
    but each job slot gets one (``CUDA_VISIBLE_DEVICES``): refuse it before anything runs rather than fail every
    such cell."""
    if device != "cuda":
        return
    cells: list[tuple[str, TrainCell | AttackCell]] = [("train.extra_args", c) for c in plan.train]
    cells += [(f"attacks.{c.attack}.extra_args", c) for c in plan.attack]
    for where, cell in cells:
        nproc = int(cell.config.get("nproc", 1))
        if nproc > 1:
            raise ConfigError(f"expected --nproc 1 in {where} on CUDA (each job gets one GPU), got --nproc "
                              f"{nproc}; run with --device cpu, or drop --nproc and use --jobs")


def _report_failures(summary: RunSummary) -> None:
    if summary.failed:
        listed = "; ".join(f"{cell.kind} {cell.key} ({cell.describe()}): {why}" for cell, why in summary.failed)
        skipped = f"; {len(summary.skipped)} attack cells skipped" if summary.skipped else ""
        raise CEMError(f"{len(summary.failed)} cells failed, rerun to retry them: {listed}{skipped}")


def run_line(plan: Plan, ran: Plan, summary: RunSummary, out: Path) -> str:
    """What a run did, in one line: ``ran`` is the part of ``plan`` it took on (``GridRunner.plan``); the
    attacks ``--attacks`` left out that a retraining queued again (``summary.queued``) add to it."""
    total = len(ran.runnable()) + len(summary.queued)
    selection = f" (of the plan's {len(plan.runnable())})" if total != len(plan.runnable()) else ""
    again = (f" ({len(summary.left_out)} of them attacks --attacks left out, taken on as their model changed)"
             if summary.left_out else "")
    return (f"{plan.name}: {total} cells{selection}, {summary.cached} were stored, {len(summary.ran)} ran now, "
            f"{len(summary.failed)} failed, {len(summary.skipped)} skipped{again}; report: cem-experiment report "
            f"{out}")


def run_command(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    plan = expand_plan(spec, run_probe)
    now = plan.selected(rows=args.rows, attacks=args.attacks, seeds=args.seeds)
    store = CellStore(args.out)
    if args.dry_run:
        listed = print_dry_run(now, store, [CellStore(folder) for folder in args.reuse_from], plan)
        if now != plan:
            print(f"(a slice: {listed} of the plan's {len(plan.runnable())} cells)")
        return 0
    options = resolve_options(args.device, args.jobs, args.threads, progress=not args.no_progress)
    # the cells this run may start: a retraining that is another model gets every attack stored on it again
    check_device_for_plan(replace(now, attack=now.attack + tuple(left_out_attacks(now, plan, store))),
                          options.device)
    _stop_on_sigterm()
    with store.lock() as lock_fd:
        store.create()
        swept = store.sweep_tmp()
        if swept:
            logger.info("deleted %d unfinished cell folders or records of an interrupted run", swept)
        store.write_plan(plan)  # the whole grid: the report lays out every cell, stored or not
        adopted = adopt_cells(now, store, [CellStore(folder) for folder in args.reuse_from])
        if adopted:
            print(f"copied {adopted} stored cells from {', '.join(map(str, args.reuse_from))}")
        runner = GridRunner(now, store, options, inherit_fds=(lock_fd,), whole=plan)
        summary = runner.run()
    print(run_line(plan, runner.plan, summary, args.out))
    _report_failures(summary)
    return 0


def report_command(args: argparse.Namespace) -> int:
    # Imported here: matplotlib, Jinja2 and scipy take seconds to load, which `run` never needs.
    from experiment.cost import cost_markdown
    from experiment.detail import build_detail, detail_json, render_detail_markdown
    from experiment.html import render_html, write_html
    from experiment.plots import plot_galleries, plot_mse_vs_entropy, plot_pareto
    from experiment.report import (
        build_table1,
        collect,
        convergence_flags,
        scored_attacks,
        unjudged_columns,
        with_strongest,
    )
    from experiment.revision import revision_counts, revision_markdown
    from experiment.tables import flag_notes, summary_line, write_tables

    store = CellStore(args.dir)
    spec_plan = store.read_plan()
    plan = spec_plan.with_attacks(args.attacks) if args.attacks else spec_plan
    left_out = [attack for attack in spec_plan.attacks if attack not in plan.attacks]
    heading = (f"{plan.name}, {', '.join(plan.attacks)} only (not reported: {', '.join(left_out)})" if left_out
               else plan.name)
    collected = collect(plan, store)
    table = build_table1(collected.observations, plan.rows, plan.attacks)
    detail = build_detail(collected.observations, plan.rows, plan.attacks)
    flags = convergence_flags(collected.observations)
    unjudged = unjudged_columns(collected.observations)
    directory = store.report_dir
    extra: dict[str, Any] = {
        "name": heading, "attacks_left_out": left_out, "planned": len(plan.runnable()), "convergence": flags,
        "unjudged": unjudged, "nonfinite": collected.nonfinite, "missing": collected.missing,
        "observations": len(collected.observations)}
    records = store.records(plan.runnable())  # read once
    costs = grid_cost(plan, records)
    revisions = revision_counts(records.values())
    extra["cost"] = [cost.to_dict() for cost in costs]
    extra["code_revisions"] = revisions
    extra["detail"] = detail_json(detail)
    write_tables(table, directory, heading, extra)  # first: the tables stand even if a figure cannot be drawn
    cost_text = cost_markdown(costs) + revision_markdown(revisions)
    (directory / "cost.md").write_text(cost_text, encoding="utf-8")
    (directory / "detail.md").write_text(render_detail_markdown(detail, heading), encoding="utf-8")
    scored, _ = with_strongest(collected.observations, plan.attacks)  # the plots draw the strongest attack too
    plotted = [("Accuracy vs attack MSE (Fig. 4)", plot_pareto(scored, scored_attacks(plan.attacks), directory)),
               ("Attack MSE vs conditional entropy (Fig. 3)",
                plot_mse_vs_entropy(scored, scored_attacks(plan.attacks), directory))]
    plotted_galleries = plot_galleries(collected.observations, plan.attacks, store, directory)
    figures = [(title, written[0]) for title, written in plotted]
    galleries = [(title, written[0]) for title, written in plotted_galleries]
    # each figure's title and files (PNG first), for readers of table1.json such as the audit console
    extra["figures"] = [{"kind": kind, "title": title, "files": [path.name for path in written]}
                        for kind, entries in (("plot", plotted), ("gallery", plotted_galleries))
                        for title, written in entries]
    paths = write_tables(table, directory, heading, extra)
    stored = sum(record is not None for record in records.values())
    page = render_html(name=heading, table=table, figures=figures, galleries=galleries, flags=flags,
                       missing=collected.missing, stored=stored, spec_text=plan.spec_text, unjudged=unjudged,
                       nonfinite=collected.nonfinite, costs=costs, detail=extra["detail"], revisions=revisions)
    index = write_html(directory / "index.html", page)
    print(paths["md"].read_text(encoding="utf-8"))
    for line in summary_line(table):
        print(f"CEM gain of the averages, {line}")
    if flags:
        print(f"note: {len(flags)} attack columns did not converge (table1.json 'convergence', index.html)")
    for note in flag_notes(collected.nonfinite, unjudged, revisions):
        print(f"note: {note}")
    if collected.missing:
        print(f"note: {len(collected.missing)} cells of the plan are not stored yet; the report covers the others")
    print()
    print(cost_text, end="")
    print(f"wrote {directory}: table1.md, table1.csv, table1.json, detail.md, cost.md, "
          f"pareto/mse_vs_entropy (.png, .svg), {len(galleries)} galleries, {index.name}")
    if args.json:
        print(json.dumps(json.loads(paths["json"].read_text(encoding="utf-8"))))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    body = run_command if args.command == "run" else report_command

    def guarded() -> int:
        try:
            return body(args)
        except Terminated:
            print(f"{parser.prog}: terminated", file=sys.stderr)
            return EXIT_TERMINATED

    return run_cli(parser.prog, guarded)


if __name__ == "__main__":
    sys.exit(main())
