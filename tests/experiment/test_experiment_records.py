"""What a cell record says about its attack's convergence (the attacker's half-budget test first, best-is-last only
without it, no validation data as "unjudged"), and when the store counts a record as done: an attack of a bundle
retrained under the same key is not, and a crash's temporary records are swept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from experiment.cells import AttackCell
from experiment.records import attack_record, column_convergence, column_unjudged
from experiment.store import CellStore

# a decoder column as attacker/audit.py writes it: 50 epochs, the last the best (the cosine decay's floor)
DECODER = {"epochs": 50, "best_epoch": 50, "still_improving": False, "doubling_gain": 0.004,
           "val_mse": [0.02, *([0.01] * 49)], "fit": 3000, "val": 300, "eval": 500}


@pytest.mark.parametrize(("change", "expected"), [
    ({}, None),  # the half-budget run says doubling bought 0.4 %: converged, although its best epoch is its last
    ({"still_improving": True, "doubling_gain": 0.08},
     "still improving: doubling its epochs lowered the validation MSE by 8.0 % (> 2 %)"),
    # the hybrid: its refinement got worse with more steps, but the decoder it started from was still improving
    ({"still_improving": True, "doubling_gain": -0.097},
     ("still improving: it started from a decoder attack that was still improving (its own doubling changed the "
      "validation MSE by +9.7 %)")),
    ({"doubling_gain": None}, "best epoch is its last (50 of 50) and no half-budget run judged it"),  # the GAN's case
    ({"doubling_gain": None, "best_epoch": 41}, None),
    ({"doubling_gain": None, "still_improving": True},
     "still improving: validation MSE still falling at the end of its 50 epochs (best 50)"),
    ({"doubling_gain": None, "val": 0, "val_mse": [None] * 50}, None),  # no validation data: unjudged, not flagged
    ({"doubling_gain": None, "optimize": {"steps": 50}}, None),  # the optimisation attacks' "epoch" is their budget
])
def test_a_column_is_not_converged_by_the_attacks_own_test(change: dict[str, Any], expected: str | None) -> None:
    assert column_convergence({**DECODER, **change}) == expected


def test_a_column_without_validation_data_is_unjudged_not_converged() -> None:
    blind = {**DECODER, "doubling_gain": None, "val": 0, "val_mse": [None] * 50}
    assert column_unjudged(blind) == "no validation images: its convergence was not judged"
    assert column_unjudged(DECODER) is None
    assert column_unjudged({**blind, "still_improving": True}) is None  # flagged: that says more
    result = {"metrics": {"train": {"mse": 0.01}, "infer": {"mse": 0.02}},
              "details": {"train": DECODER, "infer": blind, "model_id": "m-7"}}
    record = attack_record(AttackCell("a1", "t1", "decoder", 0, (), {}), result, wall_s=1.0, command="x",
                           code_revision=None)
    assert record["model_id"] == "m-7"
    assert record["columns"]["train"]["not_converged"] is None and record["columns"]["train"]["unjudged"] is None
    assert record["columns"]["infer"]["not_converged"] is None and record["columns"]["infer"]["unjudged"]


def stored_cells(root: Path, trained: str, attacked: str | None, *, in_metrics: bool = False) -> CellStore:
    """A train cell t1 holding model ``trained`` and its attack a1 of model ``attacked`` (None: a record without
    the field; ``in_metrics``: the model id only in metrics.json, as cem-attack writes it)."""
    store = CellStore(root)
    store.create()
    for kind, key, marker in (("train", "t1", "manifest.json"), ("attack", "a1", "metrics.json")):
        store.output_dir(kind, key).mkdir(parents=True)
        metrics = {"details": {"model_id": attacked}} if kind == "attack" and in_metrics else {}
        (store.output_dir(kind, key) / marker).write_text(json.dumps(metrics))
    store.save({"kind": "train", "key": "t1", "model_id": trained})
    link = {} if in_metrics or attacked is None else {"model_id": attacked}
    store.save({"kind": "attack", "key": "a1", "train_key": "t1", **link})
    return store


def test_an_attack_of_the_bundle_the_train_cell_holds_counts_as_stored(tmp_path: Path) -> None:
    assert stored_cells(tmp_path / "a", "m-1", "m-1").load("attack", "a1") is not None
    assert stored_cells(tmp_path / "b", "m-1", "m-1", in_metrics=True).load("attack", "a1") is not None


def test_an_attack_of_an_earlier_bundle_under_the_same_train_key_is_rerun(tmp_path: Path) -> None:
    store = stored_cells(tmp_path / "a", "m-2", "m-1")  # the train cell was rerun: a new model under its key
    assert store.load("train", "t1") is not None and store.load("attack", "a1") is None
    assert stored_cells(tmp_path / "b", "m-2", "m-1", in_metrics=True).load("attack", "a1") is None
    assert stored_cells(tmp_path / "c", "m-2", None).load("attack", "a1") is None  # unknown: not this model's


def test_an_attack_whose_train_cell_is_not_stored_is_rerun(tmp_path: Path) -> None:
    store = stored_cells(tmp_path, "m-1", "m-1")
    store.cell_path("train", "t1").write_text("{not json")  # unreadable: the train cell reruns, a new bundle
    assert store.load("attack", "a1") is None
    store = stored_cells(tmp_path / "deleted", "m-1", "m-1")
    store.cell_path("train", "t1").unlink()  # the train record deleted to force a retrain
    assert store.load("attack", "a1") is None


def test_a_train_record_stands_without_its_bundle_and_a_copy_leaves_the_bundle_out(tmp_path: Path) -> None:
    store = stored_cells(tmp_path / "kept", "m-1", "m-1")
    shutil.rmtree(store.output_dir("train", "t1"))  # a folder kept in git: no weights
    assert store.load("train", "t1") is not None and not store.has_outputs("train", "t1")
    assert store.load("attack", "a1") is not None
    copy = CellStore(tmp_path / "copy")
    copy.create()
    assert copy.adopt(store, "train", "t1") and copy.adopt(store, "attack", "a1")
    assert not copy.has_outputs("train", "t1") and copy.load("attack", "a1") == store.load("attack", "a1")
    shutil.rmtree(store.output_dir("attack", "a1"))  # an attack's results are its outputs: gone, it reruns
    assert store.load("attack", "a1") is None


def test_a_cell_another_run_stored_is_copied_whole_and_only_onto_its_bundle(tmp_path: Path) -> None:
    source = stored_cells(tmp_path / "earlier", "m-1", "m-1")
    source.log_path("train", "t1").write_text("# the earlier run's log\n")
    target = CellStore(tmp_path / "now")
    target.create()
    assert not target.adopt(source, "attack", "a1")  # its bundle is not in the target yet: not an orphan attack
    assert target.adopt(source, "train", "t1") and target.adopt(source, "attack", "a1")
    assert target.load("train", "t1") == source.load("train", "t1")
    assert target.load("attack", "a1") == source.load("attack", "a1")
    assert (target.output_dir("attack", "a1") / "metrics.json").is_file()
    assert target.log_path("train", "t1").read_text() == "# the earlier run's log\n"
    assert not target.adopt(source, "train", "t-unknown")


def test_a_crash_in_the_middle_of_a_record_write_leaves_nothing_after_the_next_sweep(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    store.create()
    (store.root / "cells" / ".tmp-attack-a1.json").write_text('{"kind": "att')
    (store.root / ".tmp-experiment.json").write_text("{")
    (store.root / "bundles" / ".tmp-t1-1234").mkdir()
    assert store.sweep_tmp() == 2
    assert not list(store.root.rglob(".tmp-*"))
