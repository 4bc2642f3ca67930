"""The runner's scheduling with a stand-in for the child processes: attacks wait for their bundle, at most --jobs
cells run at once, a failed training skips its attacks, a rerun runs only what is missing; and --device/--jobs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from experiment_helpers import BASE, fake_prober
from polling import wait_for

from cem.errors import CEMError, ConfigError
from experiment import cli as cli_module
from experiment import runner as runner_module
from experiment.cells import AttackCell, Cell, Plan, expand_plan
from experiment.cli import run_line
from experiment.runner import CellFailed, GridRunner, RunOptions, _Children, resolve_options
from experiment.spec import parse_spec
from experiment.store import OUTPUT_MARKERS, CellStore

REPO = Path(__file__).resolve().parents[2]


class FakeCells(GridRunner):
    """Runs no child: a cell 'succeeds' by storing an empty record, or fails when its key is in ``failing``."""

    def __init__(self, plan: Plan, store: CellStore, options: RunOptions,
                 failing: frozenset[str] = frozenset(), model: str = "model-a", whole: Plan | None = None) -> None:
        """``model``: the model id every training of this runner produces (another one: a non-deterministic rebuild)."""
        super().__init__(plan, store, options, whole=whole)
        self.failing = failing
        self.model = model
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
            outputs.mkdir(parents=True, exist_ok=True)  # a rerun replaces its outputs, as commit_dir does
            (outputs / OUTPUT_MARKERS[cell.kind]).write_text("{}")
            if isinstance(cell, AttackCell):
                attacked = self.store.load("train", cell.train_key)
                assert attacked is not None
                link = {"train_key": cell.train_key, "model_id": attacked["model_id"]}
            else:
                link = {"model_id": self.model}
            self.store.save({"kind": cell.kind, "key": cell.key, **link})
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


def test_bundles_left_out_of_the_folder_are_rebuilt_only_for_attacks_still_to_run(tmp_path: Path) -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    FakeCells(plan, store, RunOptions(jobs=2, progress=False)).run()
    for train in plan.train:  # a folder kept in git: the records and attack results, no weights
        shutil.rmtree(store.output_dir("train", train.key))
    untouched = FakeCells(plan, store, RunOptions(jobs=2, progress=False))
    assert untouched.run().cached == 16 and not untouched.started  # every attack is stored: no bundle is needed
    redo = plan.attack[0]
    store.cell_path("attack", redo.key).unlink()
    again = FakeCells(plan, store, RunOptions(jobs=2, progress=False))
    summary = again.run()
    assert again.started == [redo.train_key, redo.key]  # its bundle rebuilt, then the one missing attack
    assert summary.cached == 14 and store.has_outputs("train", redo.train_key)


def test_a_rebuilt_bundle_that_is_another_model_is_attacked_again(tmp_path: Path) -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    FakeCells(plan, store, RunOptions(jobs=2, progress=False)).run()
    redo = plan.attack[0]
    shutil.rmtree(store.output_dir("train", redo.train_key))
    store.cell_path("attack", redo.key).unlink()
    runner = FakeCells(plan, store, RunOptions(jobs=1, progress=False), model="model-b")  # training not reproduced
    summary = runner.run()
    siblings = [c.key for c in plan.attack if c.train_key == redo.train_key]
    assert runner.started[0] == redo.train_key and sorted(runner.started[1:]) == sorted(siblings)
    assert summary.cached == 16 - 1 - len(siblings)
    assert all(store.load("attack", key)["model_id"] == "model-b" for key in siblings)  # type: ignore[index]


def test_a_retrained_models_stale_attacks_run_before_the_next_training(tmp_path: Path) -> None:
    """A slice on a new machine retrains each model it needs: that model's attacks all end before the next
    training starts, so a sitting that stops early leaves whole models, not bundles lost with half their attacks."""
    plan = expand_plan(parse_spec(BASE + "\n[attacks.gan]\nepochs = 2\n"), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    FakeCells(plan, store, RunOptions(jobs=2, progress=False)).run()
    retrained = [train.key for train in plan.train[:2]]
    for key in retrained:  # the stored decoder attack stays; the GAN is what the slice came for
        shutil.rmtree(store.output_dir("train", key))
        gan = next(c for c in plan.attack if c.train_key == key and c.attack == "gan")
        store.cell_path("attack", gan.key).unlink()
    runner = FakeCells(plan, store, RunOptions(jobs=1, progress=False), model="model-b")
    runner.run()
    expected = [[key, *sorted(c.key for c in plan.attack if c.train_key == key)] for key in retrained]
    started = runner.started
    assert [started[0], *sorted(started[1:3])] == expected[0] and [started[3], *sorted(started[4:])] == expected[1]


def folder_from_git_missing_a_gan(tmp_path: Path) -> tuple[Plan, CellStore, Plan, tuple[Cell, AttackCell, AttackCell]]:
    """A grid with the decoder and GAN attacks run in full, then kept in git: the first training's weights gone
    and its GAN attack not stored yet. (plan, store, the ``--attacks gan`` slice, (that training, its decoder
    attack, its GAN attack))."""
    plan = expand_plan(parse_spec(BASE + "\n[attacks.gan]\nepochs = 2\n"), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    FakeCells(plan, store, RunOptions(jobs=2, progress=False)).run()
    train = plan.train[0]
    decoder, gan = (next(c for c in plan.attack if c.train_key == train.key and c.attack == name)
                    for name in ("decoder", "gan"))
    shutil.rmtree(store.output_dir("train", train.key))
    store.cell_path("attack", gan.key).unlink()
    gan_slice = plan.selected(attacks=("gan",))
    return plan, store, gan_slice, (train, decoder, gan)


@pytest.mark.parametrize("rebuilt_model", ["model-a", "model-b"])
def test_a_gan_slice_attacks_a_retrained_other_model_with_the_decoder_it_left_out(tmp_path: Path,
                                                                                 rebuilt_model: str) -> None:
    """``--attacks gan`` on a folder from git: the bundle is retrained for the GAN. The same model keeps its stored
    decoder attack; another model (a new machine) gets it again too, or the table would lose it without a word."""
    plan, store, gan_slice, (train, decoder, gan) = folder_from_git_missing_a_gan(tmp_path)
    runner = FakeCells(gan_slice, store, RunOptions(jobs=1, progress=False), model=rebuilt_model, whole=plan)
    summary = runner.run()
    again = [gan.key] if rebuilt_model == "model-a" else sorted([decoder.key, gan.key])
    assert runner.started[0] == train.key and sorted(runner.started[1:]) == again
    assert {c.key for c in summary.ran} == {train.key, *again}
    assert store.load("attack", decoder.key)["model_id"] == rebuilt_model  # type: ignore[index]
    line = run_line(plan, runner.plan, summary, tmp_path)  # 8 trainings and their 8 GAN attacks, of 24 cells
    assert line == (f"unit: 16 cells (of the plan's 24), 14 were stored, 2 ran now, 0 failed, 0 skipped; report: "
                    f"cem-experiment report {tmp_path}" if rebuilt_model == "model-a" else
                    f"unit: 17 cells (of the plan's 24), 14 were stored, 3 ran now, 0 failed, 0 skipped (1 of them "
                    f"attacks --attacks left out, taken on as their model changed); report: cem-experiment report "
                    f"{tmp_path}")


def test_a_left_out_attack_a_stopped_run_did_not_redo_is_redone_by_the_next(tmp_path: Path) -> None:
    """The GAN slice retrained the model into another one and failed (or was stopped) before attacking it with
    the decoder again: the decoder's record is on file but counts no more, and the same slice run again redoes
    it, though the bundle is there now and the GAN stored."""
    plan, store, gan_slice, (train, decoder, gan) = folder_from_git_missing_a_gan(tmp_path)
    first = FakeCells(gan_slice, store, RunOptions(jobs=1, progress=False), frozenset({decoder.key}), "model-b",
                      whole=plan).run()
    assert [cell.key for cell, _ in first.failed] == [decoder.key] and store.load("attack", decoder.key) is None
    again = FakeCells(gan_slice, store, RunOptions(jobs=1, progress=False), model="model-b", whole=plan)
    summary = again.run()
    assert summary.cached == 16 and again.started == [decoder.key]
    assert store.load("attack", decoder.key)["model_id"] == "model-b"  # type: ignore[index]
    assert run_line(plan, again.plan, summary, tmp_path) == (
        f"unit: 17 cells (of the plan's 24), 16 were stored, 1 ran now, 0 failed, 0 skipped (1 of them attacks "
        f"--attacks left out, taken on as their model changed); report: cem-experiment report {tmp_path}")


def test_a_left_out_attack_broken_otherwise_is_left_alone(tmp_path: Path) -> None:
    """Only a changed model makes a slice take on an attack ``--attacks`` left out: a GAN slice on a folder
    whose decoder record is unreadable (a merge gone wrong) neither runs that decoder nor retrains its bundle."""
    plan = expand_plan(parse_spec(BASE + "\n[attacks.gan]\nepochs = 2\n"), fake_prober)
    store = CellStore(tmp_path)
    store.create()
    FakeCells(plan, store, RunOptions(jobs=2, progress=False)).run()
    train = plan.train[0]
    decoder = next(c for c in plan.attack if c.train_key == train.key and c.attack == "decoder")
    shutil.rmtree(store.output_dir("train", train.key))
    store.cell_path("attack", decoder.key).write_text("<<<<<<< HEAD")
    runner = FakeCells(plan.selected(attacks=("gan",)), store, RunOptions(jobs=1, progress=False), whole=plan)
    assert runner.run().cached == 16 and not runner.started and not runner.added


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


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_grandchild_holding_stdout_open_does_not_hold_the_cell(tmp_path: Path) -> None:
    # the child prints its summary and exits, leaving a background grandchild that inherited its stdout
    script = 'sleep 60 & echo $!; echo \'{"ok": true}\''
    started = time.monotonic()
    code, stdout = _Children().run(["sh", "-c", script], dict(os.environ), tmp_path / "cell.log")
    log = (tmp_path / "cell.log").read_text()
    assert code == 0 and stdout.split(), f"exit {code}, stdout {stdout!r}, log {log!r}"
    grandchild = int(stdout.split()[0])
    try:
        assert runner_module._last_json(stdout) == {"ok": True}
        assert time.monotonic() - started < 30  # a pipe read to its end would wait for the grandchild's 60 s
        assert '{"ok": true}' in log
    finally:
        os.kill(grandchild, signal.SIGKILL)


# A runner process that starts one cell (a sleeping child that writes its pid) under the run lock, as run_command
# does; argv[2] == "no-pdeathsig" leaves the lock as the only guard.
RUNNER = """
import os, sys, time
from pathlib import Path
from experiment import runner
from experiment.store import CellStore

root = Path(sys.argv[1])
if sys.argv[2] == "no-pdeathsig":
    runner._die_with_parent = None
child = ("import os, sys, time; from pathlib import Path; "
         "Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(120)")
with CellStore(root).lock() as fd:
    runner._Children((fd,)).run([sys.executable, "-c", child, str(root / "child.pid")], dict(os.environ),
                                root / "cell.log")
"""


def start_runner(root: Path, mode: str) -> tuple[subprocess.Popen[bytes], int]:
    root.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(root), mode], cwd=REPO, env=env)
    pid_file = root / "child.pid"
    pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 60, "the cell's child to start"))
    return runner, pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_runner_takes_its_children_with_it(tmp_path: Path) -> None:
    runner, child = start_runner(tmp_path / "run", "pdeathsig")
    try:
        runner.kill()
        runner.wait(timeout=30)
        wait_for(lambda: not alive(child), 30, "the orphaned child to get SIGTERM")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_rerun_cannot_take_the_folder_while_a_child_of_a_killed_run_lives(tmp_path: Path) -> None:
    root = tmp_path / "run"
    runner, child = start_runner(root, "no-pdeathsig")
    try:
        runner.kill()
        runner.wait(timeout=30)
        assert alive(child)
        with pytest.raises(CEMError, match="another cem-experiment run"), CellStore(root).lock():
            pass  # a rerun would sweep the live child's temporary folder and start its cell again
    finally:
        os.kill(child, signal.SIGKILL)
    wait_for(lambda: not alive(child), 30, "the child to die")
    with CellStore(root).lock():
        pass  # the last holder gone, the folder is free


@pytest.mark.parametrize(("raised", "status"), [(cli_module.Terminated, 143), (KeyboardInterrupt, 130)])
def test_sigterm_exits_143_and_ctrl_c_130(monkeypatch: pytest.MonkeyPatch, raised: type[BaseException],
                                          status: int) -> None:
    def interrupted(args: object) -> int:
        raise raised

    monkeypatch.setattr(cli_module, "run_command", interrupted)
    assert cli_module.main(["run", "spec.toml", "--out", "out"]) == status


def test_the_sigterm_handler_raises_terminated() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        cli_module._stop_on_sigterm()
        with pytest.raises(cli_module.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode boundary
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_plan_with_nproc_is_refused_on_cuda_where_each_job_gets_one_gpu() -> None:
    spec = parse_spec(BASE.replace("cem_lambdas = [0, 2]", 'cem_lambdas = [0, 2]\nextra_args = ["--nproc", "2"]'))
    plan = expand_plan(spec, fake_prober)
    assert {c.config["nproc"] for c in plan.train} == {2}
    cli_module.check_device_for_plan(plan, "cpu")
    with pytest.raises(ConfigError, match="expected --nproc 1 in train.extra_args on CUDA"):
        cli_module.check_device_for_plan(plan, "cuda")


def test_an_attack_with_nproc_is_keyed_apart_and_refused_on_cuda() -> None:
    spec = parse_spec(BASE.replace("epochs = 3", 'epochs = 3\nextra_args = ["--nproc", "2"]'))
    plan = expand_plan(spec, fake_prober)
    assert {c.config["nproc"] for c in plan.attack} == {2} and all("nproc" not in c.config for c in plan.train)
    assert all(c.args[-2:] == ("--nproc", "2") for c in plan.attack)  # handed to cem-attack verbatim
    one_process = expand_plan(parse_spec(BASE), fake_prober)
    assert {c.key for c in plan.attack}.isdisjoint(c.key for c in one_process.attack)
    cli_module.check_device_for_plan(plan, "cpu")
    with pytest.raises(ConfigError, match=r"expected --nproc 1 in attacks.decoder.extra_args on CUDA \(each job "
                                          r"gets one GPU\), got --nproc 2"):
        cli_module.check_device_for_plan(plan, "cuda")
