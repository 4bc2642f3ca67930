"""``run --dry-run --reuse-from`` says what the real run will do: which cells it copies, which copied or stored
trainings it must run again for a missing bundle (a folder kept in git holds none), and what it runs; checked
against ``adopt_cells`` followed by the runner's own view, on records written by hand (nothing trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment.cells import AttackCell, Plan, TrainCell
from experiment.cli import adopt_cells, print_dry_run
from experiment.runner import GridRunner, RunOptions
from experiment.store import CellStore


def store_at(root: Path) -> CellStore:
    store = CellStore(root)
    store.create()
    return store


def save_train(store: CellStore, key: str, model: str, *, bundle: bool) -> None:
    if bundle:
        store.output_dir("train", key).mkdir(parents=True)
        (store.output_dir("train", key) / "manifest.json").write_text("{}")
    store.save({"kind": "train", "key": key, "model_id": model})


def save_attack(store: CellStore, key: str, train_key: str, model: str) -> None:
    store.output_dir("attack", key).mkdir(parents=True)
    (store.output_dir("attack", key) / "metrics.json").write_text(json.dumps({}))
    store.save({"kind": "attack", "key": key, "train_key": train_key, "model_id": model})


def folders(root: Path) -> tuple[Plan, CellStore, list[CellStore]]:
    """Five models t1-t5, each with one attack a1-a5, and what each folder holds of them:

    * t1, a1: in source A, bundle included: both copied;
    * t2: in A without its bundle (kept in git), a2 nowhere: t2 copied, then trained again for a2;
    * t3: here without its bundle, a3 in A on the same model: a3 copied, so t3 need not train again;
    * t4: here with its bundle, a4 in A on another model: a4 runs;
    * t5, a5: only in source B, after A in the order given."""
    here, first, second = store_at(root / "here"), store_at(root / "a"), store_at(root / "b")
    save_train(first, "t1", "m1", bundle=True)
    save_attack(first, "a1", "t1", "m1")
    save_train(first, "t2", "m2", bundle=False)
    save_train(here, "t3", "m3", bundle=False)
    save_train(first, "t3", "m3", bundle=True)
    save_attack(first, "a3", "t3", "m3")
    save_train(here, "t4", "m4", bundle=True)
    save_train(first, "t4", "m4-other", bundle=True)
    save_attack(first, "a4", "t4", "m4-other")
    save_train(second, "t5", "m5", bundle=True)
    save_attack(second, "a5", "t5", "m5")
    trains = [TrainCell(f"t{i}", "digits", "vgg11_bn_sgm", 4, "Bottleneck", 0.1, 0.0, i, (), {}) for i in range(1, 6)]
    attacks = [AttackCell(f"a{i}", f"t{i}", "decoder", i, (), {}) for i in range(1, 6)]
    return Plan("reuse", ("Bottleneck",), ("decoder",), tuple(trains), tuple(attacks), {}), here, [first, second]


def test_the_dry_run_shows_the_folder_as_the_real_copy_leaves_it(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan, here, sources = folders(tmp_path)
    print_dry_run(plan, here, sources, plan)
    printed = capsys.readouterr().out.splitlines()
    dry = {line.split()[1]: line.split()[2] for line in printed[:-2]}
    assert dry == {"t1": "reuse", "a1": "reuse", "t2": "rebuild", "a2": "to-run", "t3": "cached", "a3": "reuse",
                   "t4": "cached", "a4": "to-run", "t5": "reuse", "a5": "reuse"}
    assert printed[-2] == "10 cells: 2 cached, 5 to copy from --reuse-from, 3 to run (reuse; nothing was run)"
    assert printed[-1] == "to run: 1 train, 2 decoder; no timed stored cell of these kinds to price them by"
    assert not here.has_outputs("attack", "a1") and here.load("train", "t2") is None  # nothing was copied

    # the real copy (t2's record too: the dry run counts it as a training to run), then the runner's own view
    assert adopt_cells(plan, here, sources) == 6
    done, rebuild = GridRunner(plan, here, RunOptions(progress=False)).plan_state()
    real = {cell.key: "rebuild" if cell.key in rebuild else "copied or cached" if (cell.kind, cell.key) in done
            else "to-run" for cell in plan.runnable()}
    assert real == {key: "copied or cached" if state in ("reuse", "cached") else state for key, state in dry.items()}


def test_the_dry_run_prices_a_slice_at_the_whole_grids_medians_with_the_copied_cells(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seeds 1-2 slice: seed 0's training (100 s) and attack (300 s) are stored here, outside the slice; seed
    1's training (200 s) is in the ``--reuse-from`` folder. What the slice runs is priced at the medians of the
    whole grid as the copy leaves the folder: train 150 s, decoder 300 s."""
    here, source = store_at(tmp_path / "here"), store_at(tmp_path / "source")
    for store, key, wall in ((here, "t0", 100.0), (source, "t1", 200.0)):
        store.output_dir("train", key).mkdir(parents=True)
        (store.output_dir("train", key) / "manifest.json").write_text("{}")
        store.save({"kind": "train", "key": key, "model_id": f"m{key}", "wall_s": wall})
    here.output_dir("attack", "a0").mkdir(parents=True)
    (here.output_dir("attack", "a0") / "metrics.json").write_text("{}")
    here.save({"kind": "attack", "key": "a0", "train_key": "t0", "model_id": "mt0", "wall_s": 300.0})
    trains = [TrainCell(f"t{i}", "digits", "vgg11_bn_sgm", 4, "Bottleneck", 0.1, 0.0, i, (), {}) for i in range(3)]
    attacks = [AttackCell(f"a{i}", f"t{i}", "decoder", i, (), {}) for i in range(3)]
    plan = Plan("slice", ("Bottleneck",), ("decoder",), tuple(trains), tuple(attacks), {})
    print_dry_run(plan.selected(seeds=(1, 2)), here, [source], plan)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == "4 cells: 0 cached, 1 to copy from --reuse-from, 3 to run (slice; nothing was run)"
    assert printed[-1] == ("to run: 1 train, 2 decoder: about 0.2 cell-hours at the stored medians (train 150 s, "
                           "decoder 300 s); divide by --jobs")  # 150 + 2 x 300 = 750 s


def test_the_dry_run_names_the_stored_attacks_on_a_bundle_it_retrains(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A folder from git: t0's record and its decoder attack a0 (600 s) stored, no weights, its GAN g0 missing.
    The run retrains t0 for g0; if that is another model, a0 runs again too, also when ``--attacks gan`` leaves
    it out, and the dry run says so."""
    here = store_at(tmp_path / "here")
    here.save({"kind": "train", "key": "t0", "model_id": "m0", "wall_s": 100.0})
    here.output_dir("attack", "a0").mkdir(parents=True)
    (here.output_dir("attack", "a0") / "metrics.json").write_text("{}")
    here.save({"kind": "attack", "key": "a0", "train_key": "t0", "model_id": "m0", "wall_s": 600.0})
    train = TrainCell("t0", "digits", "vgg11_bn_sgm", 4, "Bottleneck", 0.1, 0.0, 0, (), {})
    attacks = (AttackCell("a0", "t0", "decoder", 0, (), {}), AttackCell("g0", "t0", "gan", 0, (), {}))
    plan = Plan("retrain", ("Bottleneck",), ("decoder", "gan"), (train,), attacks, {})
    print_dry_run(plan, here, [], plan)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in printed[:3]] == ["rebuild", "cached", "to-run"]
    assert printed[-2] == ("to run: 1 train, 1 gan: about 0.0 cell-hours at the stored medians (train 100 s); gan "
                           "not priced (no timed cell stored); divide by --jobs")
    assert printed[-1] == ("and if a retrained bundle is another model (another machine or torch), its stored "
                           "attacks run again: 1 decoder: up to 0.2 cell-hours more")  # 600 s
    assert print_dry_run(plan.selected(attacks=("gan",)), here, [], plan) == 2  # a0 is left out, not spared
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in printed[:2]] == ["rebuild", "to-run"] and printed[2].startswith("2 cells")
    assert printed[-1].endswith("its stored attacks run again: 1 decoder: up to 0.2 cell-hours more")
    # t0 retrained into another model by a run that stopped before redoing a0: the GAN slice takes a0 on
    here.save({"kind": "train", "key": "t0", "model_id": "m1", "wall_s": 100.0})
    assert print_dry_run(plan.selected(attacks=("gan",)), here, [], plan) == 3
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in printed[:3]] == [["t0", "rebuild"], ["a0", "to-run"], ["g0", "to-run"]]
    assert printed[3] == "3 cells: 0 cached, 3 to run (retrain; nothing was run)"
