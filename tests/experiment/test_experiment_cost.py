"""What a grid's cells cost, read from the stored records: stored and remaining per kind, priced at the median."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiment_helpers import BASE, fake_prober

from experiment.cells import expand_plan
from experiment.cost import CellCost, cost_markdown, grid_cost, rerun_estimate, run_estimate
from experiment.spec import parse_spec
from experiment.store import CellStore


def test_remaining_cells_are_priced_at_the_median_of_the_stored_ones(tmp_path: Path) -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    assert len(plan.train) == 8 and len(plan.attack) == 8  # 2 seeds x 2 rows x 2 lambdas, one attack each
    for cell, wall in zip(plan.train[:3], (10.0, 30.0, 20.0), strict=True):
        store.save({"key": cell.key, "kind": cell.kind, "wall_s": wall})
    store.save({"key": plan.train[3].key, "kind": "train"})  # a record from before the field: stored, unpriced
    records = {(cell.kind, cell.key): store.load(cell.kind, cell.key) for cell in plan.runnable()}
    train, decoder = grid_cost(plan, records)
    assert (train.kind, train.stored, train.remaining, train.total_s, train.median_s) == ("train", 4, 4, 60.0, 20.0)
    assert train.remaining_s == 80.0
    assert (decoder.kind, decoder.stored, decoder.remaining, decoder.median_s, decoder.remaining_s) == \
        ("decoder", 0, 8, None, None)  # nothing stored prices nothing
    markdown = cost_markdown([train, decoder])
    assert "\ntrain | 4 (1 untimed) | 20 | 0.0 | 4 | 0.0\n" in markdown
    assert "\ndecoder | 0 | — | 0.0 | 8 | —\n" in markdown
    assert train.to_dict() == pytest.approx({"kind": "train", "stored": 4, "untimed": 1, "remaining": 4,
                                             "total_s": 60.0, "median_s": 20.0, "remaining_s": 80.0})


def test_a_cell_that_resumed_an_interrupted_run_is_stored_but_not_priced() -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    # (wall s, epochs the infer column resumed, whether its pre-training came from the cache)
    runs = ((100.0, 0, False), (200.0, 0, False), (5.0, 140, False), (9.0, 0, True))
    records = {("attack", cell.key): {"wall_s": wall, "columns": {
        "train": {"resumed_epochs": 0, "pretraining_cached": False},
        "infer": {"resumed_epochs": resumed, "pretraining_cached": cached}}}
               for cell, (wall, resumed, cached) in zip(plan.attack[:4], runs, strict=True)}
    _, decoder = grid_cost(plan, records)
    assert (decoder.stored, decoder.untimed, decoder.remaining, decoder.total_s, decoder.median_s) == \
        (4, 2, 4, 300.0, 150.0)
    assert "\ndecoder | 4 (2 untimed) | 150 | 0.1 | 4 | 0.2\n" in cost_markdown([decoder])


def test_a_dry_run_prices_the_cells_to_run_at_the_stored_medians() -> None:
    costs = [CellCost("train", 4, 2, 60.0, 200.0), CellCost("decoder", 3, 5, 900.0, 400.0),
             CellCost("gan", 0, 9, 0.0, None)]
    assert run_estimate({"decoder": 5, "train": 2}, costs) == (  # in the cost table's order
        "to run: 2 train, 5 decoder: about 0.7 cell-hours at the stored medians (train 200 s, decoder 400 s); "
        "divide by --jobs")  # 2 x 200 + 5 x 400 = 2,400 s
    assert run_estimate({"decoder": 1, "gan": 9}, costs).endswith(
        "(decoder 400 s); gan not priced (no timed cell stored); divide by --jobs")
    assert run_estimate({"gan": 9}, costs) == "to run: 9 gan; no timed stored cell of these kinds to price them by"
    assert run_estimate({}, costs) == "nothing to run"


def test_a_dry_run_prices_the_stored_attacks_a_retrained_bundle_may_need_again() -> None:
    costs = [CellCost("train", 4, 2, 60.0, 200.0), CellCost("decoder", 3, 5, 900.0, 400.0),
             CellCost("gan", 0, 9, 0.0, None)]
    assert rerun_estimate({"decoder": 9}, costs) == (
        "and if a retrained bundle is another model (another machine or torch), its stored attacks run again: "
        "9 decoder: up to 1.0 cell-hours more")  # 9 x 400 = 3,600 s
    assert rerun_estimate({"gan": 1, "decoder": 2}, costs).endswith("2 decoder, 1 gan: up to 0.2 cell-hours more; "
                                                                    "gan not priced")  # type: ignore[union-attr]
    assert rerun_estimate({"gan": 1}, costs).endswith("again: 1 gan; gan not priced")  # type: ignore[union-attr]
    assert rerun_estimate({}, costs) is None
