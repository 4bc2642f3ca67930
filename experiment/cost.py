"""What a grid's stored cells cost, per kind of cell (the trainings, each attack), and what the rest will.

A grid that takes days runs in slices over several sittings (docs/experiments.md),
so its user needs to know, from the stored records alone, what each kind of
cell took and how many are left. Every record keeps the wall seconds of its own
cell (``wall_s``). Cells ran ``--jobs`` at a time, beside whatever else the
machine ran, so the sum is cell-seconds of wall time, not the grid's elapsed
time; the median is the number to plan the remaining cells by. A GAN cell that
continued an interrupted run (``resumed_epochs`` in a column, or its decoder
pre-training loaded from the cache: ``pretraining_cached``; attacker.attacks.resume)
timed only its last part: it counts as stored and *untimed*, its wall time is left
out (so are the records from before the wall-time field).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiment.cells import AttackCell, Cell, Plan


@dataclass(frozen=True)
class CellCost:
    """One kind of cell: ``kind`` is ``train`` or an attack's name."""

    kind: str
    stored: int
    remaining: int
    total_s: float
    median_s: float | None
    untimed: int = 0  # stored cells whose wall time is not a whole cell's: outside the sum and the median

    @property
    def stored_label(self) -> str:
        """The stored count as the tables show it, naming the untimed ones."""
        return f"{self.stored} ({self.untimed} untimed)" if self.untimed else str(self.stored)

    @property
    def remaining_s(self) -> float | None:
        """The remaining cells at the stored median: cell-seconds, divide by the jobs that will run them."""
        return None if self.median_s is None else self.remaining * self.median_s

    def to_dict(self) -> dict[str, object]:
        def rounded(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds, 1)

        return {"kind": self.kind, "stored": self.stored, "untimed": self.untimed, "remaining": self.remaining,
                "total_s": rounded(self.total_s), "median_s": rounded(self.median_s),
                "remaining_s": rounded(self.remaining_s)}


def cost_kind(cell: Cell) -> str:
    """The kind a cell is priced as: ``train``, or its attack's name."""
    return cell.attack if isinstance(cell, AttackCell) else "train"


def grid_cost(plan: Plan, records: Mapping[tuple[str, str], Mapping[str, Any] | None]) -> list[CellCost]:
    """The cost of every kind of cell in ``plan``: trainings first, then the attacks in the plan's order.
    ``records``: each cell's stored record by (kind, key), None (or absent) when it is not stored."""
    walls: dict[str, list[float]] = {"train": [], **{attack: [] for attack in plan.attacks}}
    stored, remaining = dict.fromkeys(walls, 0), dict.fromkeys(walls, 0)
    for cell in plan.runnable():
        kind = cost_kind(cell)
        record = records.get((cell.kind, cell.key))
        if record is None:
            remaining[kind] += 1
            continue
        stored[kind] += 1
        wall = record.get("wall_s")
        if isinstance(wall, int | float) and not isinstance(wall, bool) and not _resumed(record):
            walls[kind].append(float(wall))
    return [CellCost(kind, stored[kind], remaining[kind], sum(values), statistics.median(values) if values else None,
                     untimed=stored[kind] - len(values))
            for kind, values in walls.items()]


def _resumed(record: Mapping[str, Any]) -> bool:
    """Whether any column of an attack record continued work an earlier run had done (its wall time is a part's)."""
    columns = record.get("columns")
    return isinstance(columns, Mapping) and any(isinstance(c, Mapping) and _continued(c) for c in columns.values())


def _continued(column: Mapping[str, Any]) -> bool:
    resumed = column.get("resumed_epochs")
    return (isinstance(resumed, int) and resumed > 0) or column.get("pretraining_cached") is True


def _hours(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 3600:.1f}"


def cost_markdown(costs: Sequence[CellCost]) -> str:
    """The cost table, as Markdown."""
    lines = ["cells | stored | median wall s | stored cell-hours | remaining | remaining cell-hours (at the median)",
             "--- | --- | --- | --- | --- | ---"]
    for cost in costs:
        median = "—" if cost.median_s is None else f"{cost.median_s:.0f}"
        lines.append(f"{cost.kind} | {cost.stored_label} | {median} | {_hours(cost.total_s)} | {cost.remaining} | "
                     f"{_hours(cost.remaining_s)}")
    return "\n".join(lines) + "\n"


def _priced(counts: Mapping[str, int], costs: Sequence[CellCost]) -> tuple[str, float, str, list[str]]:
    """``counts`` in the cost table's order (trainings, then the attacks) as text, their price in seconds at the
    stored medians, those medians as text, and the kinds no timed stored cell prices."""
    medians = {cost.kind: cost.median_s for cost in costs if cost.median_s is not None}
    order = [cost.kind for cost in costs if cost.kind in counts]
    kinds = order + [kind for kind in counts if kind not in order]
    priced = {kind: counts[kind] * medians[kind] for kind in kinds if kind in medians}
    text = ", ".join(f"{counts[kind]} {kind}" for kind in kinds)
    at = ", ".join(f"{kind} {medians[kind]:.0f} s" for kind in priced)
    return text, sum(priced.values()), at, [kind for kind in kinds if kind not in priced]


def run_estimate(to_run: Mapping[str, int], costs: Sequence[CellCost]) -> str:
    """One line for a dry run: the cells it would run by kind, priced at the stored medians in cell-hours (divide
    by the jobs that will run them), naming any kind with no timed stored cell to price it by (only resumed or
    pre-``wall_s`` ones, ``grid_cost``). An estimate: a GAN attack that resumes costs less, and the attacks a
    retrained bundle may need again are ``rerun_estimate``'s."""
    if not to_run:
        return "nothing to run"
    counts, seconds, at, unpriced = _priced(to_run, costs)
    if not at:
        return f"to run: {counts}; no timed stored cell of these kinds to price them by"
    tail = f"; {', '.join(unpriced)} not priced (no timed cell stored)" if unpriced else ""
    return (f"to run: {counts}: about {_hours(seconds)} cell-hours at the stored medians ({at}){tail}; "
            "divide by --jobs")


def rerun_estimate(at_risk: Mapping[str, int], costs: Sequence[CellCost]) -> str | None:
    """The dry run's line for the stored attacks on bundles it retrains: they run again if the retrain is another
    model, which a dry run cannot know (another machine or torch: docs/experiments.md). None when there are none."""
    if not at_risk:
        return None
    counts, seconds, at, unpriced = _priced(at_risk, costs)
    price = f": up to {_hours(seconds)} cell-hours more" if at else ""
    tail = f"; {', '.join(unpriced)} not priced" if unpriced else ""
    return (f"and if a retrained bundle is another model (another machine or torch), its stored attacks run "
            f"again: {counts}{price}{tail}")
