"""The runner's scheduling with a stand-in for the child processes: attacks wait for their bundle, at most --jobs
cells run at once, a failed training skips its attacks, a rerun runs only what is missing; and --device/--jobs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from experiment_helpers import BASE, fake_prober

from cem.errors import ConfigError
from experiment import runner as runner_module
from experiment.cells import AttackCell, Cell, Plan, expand_plan
from experiment.runner import CellFailed, GridRunner, RunOptions, resolve_options
from experiment.spec import parse_spec
from experiment.store import OUTPUT_MARKERS, CellStore


class FakeCells(GridRunner):
    """Runs no child: a cell 'succeeds' by storing an empty record, or fails when its key is in ``failing``."""

    def __init__(self, plan: Plan, store: CellStore, options: RunOptions,
                 failing: frozenset[str] = frozenset()) -> None:
        super().__init__(plan, store, options)
        self.failing = failing
        self.lock = threading.Lock()
        self.active = self.most_active = 0
        self.started: list[str] = []
        self.slots: set[int] = set()

    def execute(self, cell: Cell, slot: int) -> None:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.started.append(cell.key)
            self.slots.add(slot)
        try:
            if isinstance(cell, AttackCell):
                assert self.store.load("train", cell.train_key) is not None, "an attack started before its bundle"
            time.sleep(0.02)
            if cell.key in self.failing:
                raise CellFailed("cem-train exited with status 1")
            outputs = self.store.output_dir(cell.kind, cell.key)
            outputs.mkdir(parents=True)
            (outputs / OUTPUT_MARKERS[cell.kind]).write_text("{}")
            self.store.save({"kind": cell.kind, "key": cell.key})
        finally:
            with self.lock:
                self.active -= 1


def test_cells_run_jobs_at_a_time_attacks_after_their_bundle_and_a_rerun_runs_nothing(tmp_path: Path) -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    first = FakeCells(plan, store, RunOptions(jobs=3, progress=False))
    summary = first.run()
    assert len(summary.ran) == 16 and summary.cached == 0 and not summary.failed
    assert first.most_active <= 3 and first.slots <= {0, 1, 2}
    assert sorted(first.started) == sorted(c.key for c in plan.runnable())
    again = FakeCells(plan, store, RunOptions(jobs=3, progress=False))
    rerun = again.run()
    assert rerun.cached == 16 and not rerun.ran and not again.started


def test_a_failed_training_skips_its_attacks_and_the_rest_goes_on(tmp_path: Path) -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    broken = plan.train[1]
    store = CellStore(tmp_path)
    store.create()
    summary = FakeCells(plan, store, RunOptions(jobs=2, progress=False), frozenset({broken.key})).run()
    assert [(cell.key, why) for cell, why in summary.failed] == [(broken.key, "cem-train exited with status 1")]
    assert [cell.key for cell in summary.skipped] == [c.key for c in plan.attack if c.train_key == broken.key]
    assert len(summary.ran) == 14
    retry = FakeCells(plan, store, RunOptions(jobs=2, progress=False)).run()  # the next run retries only those
    assert {c.key for c in retry.ran} == {broken.key, *(c.key for c in summary.skipped)} and retry.cached == 14


def test_device_jobs_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "visible_gpus", lambda: ())
    cpu = resolve_options("auto", None, 3)
    assert (cpu.device, cpu.jobs, cpu.threads, cpu.gpu_ids) == ("cpu", 1, 3, ())
    with pytest.raises(ConfigError, match="expected a CUDA device for --device cuda"):
        resolve_options("cuda", None, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_options("cpu", 4, None).threads == 2
    monkeypatch.setattr(runner_module, "visible_gpus", lambda: ("3", "5"))
    gpu = resolve_options("auto", None, 1)
    assert (gpu.device, gpu.jobs) == ("cuda", 2)  # one job per visible GPU
    assert [gpu.slot_env(slot)["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == ["3", "5", "3", "5"]
    assert gpu.slot_env(0)["OMP_NUM_THREADS"] == "1"
    assert resolve_options("cpu", 2, 1).gpu_ids == ()  # --device cpu never hands out GPUs
    with pytest.raises(ConfigError, match="--jobs"):
        resolve_options("cpu", 0, 1)
