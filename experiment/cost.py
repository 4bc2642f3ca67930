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


def run_estimate(to_run: Mapping[str, int], costs: Sequence[CellCost]) -> str:
    """One line for a dry run: the cells it would run by kind, priced at the stored medians in cell-hours (divide
    by the jobs that will run them), naming any kind with no timed stored cell to price it by (only resumed or
    pre-``wall_s`` ones, ``grid_cost``). An estimate: a GAN attack that resumes costs less, and an attack rerun on
    a retrained bundle that holds another model is not foreseen."""
    if not to_run:
        return "nothing to run"
    medians = {cost.kind: cost.median_s for cost in costs if cost.median_s is not None}
    order = [cost.kind for cost in costs if cost.kind in to_run]  # the cost table's: trainings, then the attacks
    kinds = order + [kind for kind in to_run if kind not in order]
    priced = {kind: to_run[kind] * medians[kind] for kind in kinds if kind in medians}
    counts = ", ".join(f"{to_run[kind]} {kind}" for kind in kinds)
    unpriced = [kind for kind in kinds if kind not in priced]
    if not priced:
        return f"to run: {counts}; no timed stored cell of these kinds to price them by"
    at = ", ".join(f"{kind} {medians[kind]:.0f} s" for kind in priced)
    tail = f"; {', '.join(unpriced)} not priced (no timed cell stored)" if unpriced else ""
    return (f"to run: {counts}: about {_hours(sum(priced.values()))} cell-hours at the stored medians ({at}){tail}; "
            "divide by --jobs")
