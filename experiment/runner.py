"""Run the missing cells of a plan: the real ``cem-train`` and ``cem-attack`` as child processes, ``--jobs`` at once.

Each cell is one child process of the project's own CLI (``python -m training.cli``,
``python -m attacker.cli``), started from a worker thread that only waits for it,
so cells run in parallel processes while this process keeps the one progress bar
(stderr) for the whole grid. A child writes into a temporary folder; when it
exits 0 the folder is renamed to the cell's key and the cell's record is written
last (``experiment.store``). A failed cell is reported and retried by the next
run; the attacks of a failed train cell are skipped. Each cell's command line and
its child's output go to ``DIR/logs/<kind>-<key>.log``.

On CUDA (``--device cuda``, or ``auto`` where torch sees a GPU) the worker slots
take the visible GPUs in turn through ``CUDA_VISIBLE_DEVICES`` (``--jobs``
defaults to one per GPU). On Ctrl-C or SIGTERM the children are stopped, nothing
half-done is recorded, and a rerun picks up the same cells.

If this process dies without stopping them (SIGKILL, the OOM killer), its
children must not run on as orphans: a rerun would sweep their live temporary
folders and start the same cells again beside them. So on Linux each child asks
the kernel for SIGTERM when the thread that started it dies
(``prctl(PR_SET_PDEATHSIG)``, ``_die_with_parent``), and every child holds the
run's lock file open (``pass_fds``), so no rerun can take the folder while one
lives. A child's stdout goes to an anonymous temporary file, not a pipe: a
grandchild that keeps the pipe open (torchrun's workers under ``--nproc``) could
otherwise hold ``communicate()`` long after the child exited.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from cem.errors import CEMError, ConfigError
from experiment.cells import AttackCell, Cell, Plan, TrainCell
from experiment.records import attack_record, train_record
from experiment.revision import code_revision, code_root
from experiment.store import CellStore

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
STOP_GRACE_S = 10.0
TRAIN_MODULE = "training.cli"
ATTACK_MODULE = "attacker.cli"


@dataclass(frozen=True)
class RunOptions:
    """How cells run (never part of a cell's key): parallel slots, the children's device and threads, and the
    GPU each slot gets (``gpu_ids[slot % len]``; empty on CPU)."""

    jobs: int = 1
    device: str = "cpu"
    threads: int = 1
    gpu_ids: tuple[str, ...] = ()
    progress: bool = True
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.threads < 1:
            raise ConfigError(f"expected --jobs and --threads >= 1, got {self.jobs} and {self.threads}")

    def slot_env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        if self.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_ids[slot % len(self.gpu_ids)]
        return env


def visible_gpus() -> tuple[str, ...]:
    """The CUDA devices a child may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty without CUDA)."""
    import torch  # only asked when the device may be CUDA: a CPU run and the report never load torch here

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return ()
    listed = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return tuple(listed[:count]) if listed else tuple(str(i) for i in range(count))


def _default_threads(jobs: int) -> int:
    """``OMP_NUM_THREADS`` when set, else the idle CPUs shared among the jobs (``cem.threads``' rule)."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) >= 1:
        return int(configured)
    from cem.threads import idle_cpus  # loads torch: only for a run that did not say

    return max(1, idle_cpus() // jobs)


def resolve_options(device: str, jobs: int | None, threads: int | None, progress: bool = True) -> RunOptions:
    """``--device``, ``--jobs`` and ``--threads`` as the runner uses them."""
    if device not in DEVICE_CHOICES:
        raise ConfigError(f"expected --device in {DEVICE_CHOICES}, got {device!r}")
    gpu_ids = visible_gpus() if device != "cpu" else ()
    if device == "cuda" and not gpu_ids:
        raise ConfigError("expected a CUDA device for --device cuda, but torch sees none")
    jobs = jobs if jobs is not None else max(1, len(gpu_ids))
    if jobs < 1:
        raise ConfigError(f"expected --jobs >= 1, got {jobs}")
    threads = threads if threads is not None else _default_threads(jobs)
    return RunOptions(jobs=jobs, device="cuda" if gpu_ids else "cpu", threads=threads, gpu_ids=gpu_ids,
                      progress=progress)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when the thread that started it dies (Linux), or
    None where there is no ``prctl`` (other systems: children then outlive a killed runner, held off by the
    lock alone). The starting thread is the worker that waits for the child, so it dies only with the runner.
    libc is loaded here, in the parent, so the child only makes one system call between fork and exec (a
    ``preexec_fn`` must not take locks other threads may hold)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    term = int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, term, 0, 0, 0)

    return die_with_parent


_die_with_parent = _parent_death_hook()


class CellFailed(CEMError):
    """A cell's child exited with an error, or its outputs could not be read."""


class _Children:
    """The running child processes, so that an interrupt can stop every one of them."""

    def __init__(self, inherit_fds: Sequence[int] = ()) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.stopping = threading.Event()
        self.inherit_fds = tuple(inherit_fds)  # the run lock's descriptor (module docstring)

    def run(self, argv: Sequence[str], env: dict[str, str], log_path: os.PathLike[str]) -> tuple[int, str]:
        """Run ``argv`` to its end; its stderr (progress, logs) and stdout go to ``log_path``. (exit status, stdout)"""
        started = time.perf_counter()
        with open(log_path, "a", encoding="utf-8") as log, tempfile.TemporaryFile() as out:
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            log.write(f"# {stamp} {shlex.join(argv)}\n")
            log.flush()
            with self._lock:
                if self.stopping.is_set():
                    raise CellFailed("interrupted before it started")
                child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=log, env=env,
                                         pass_fds=self.inherit_fds, preexec_fn=_die_with_parent)
                self._running.add(child)
            try:
                child.wait()
            finally:
                with self._lock:
                    self._running.discard(child)
            out.seek(0)
            stdout = out.read().decode("utf-8", errors="replace")
            log.write(stdout)
            log.write(f"# exit {child.returncode} after {time.perf_counter() - started:.1f} s\n")
        return child.returncode, stdout

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every child, SIGKILL those still alive after ``grace_s``; no new child starts after this."""
        with self._lock:
            self.stopping.set()
            children = list(self._running)
        for child in children:
            child.terminate()
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()


def _last_json(stdout: str) -> dict[str, Any] | None:
    """The ``--json`` summary a CLI prints as its last stdout line, or None."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def left_out_attacks(plan: Plan, whole: Plan, store: CellStore) -> list[AttackCell]:
    """The attacks of ``whole`` on ``plan``'s trainings that ``plan`` (a ``--attacks`` slice of it) left out and
    that have a record on file, counting or not: those this run may take on (``GridRunner``)."""
    trains = {cell.key for cell in plan.train}
    chosen = {cell.key for cell in plan.attack}
    return [cell for cell in whole.attack if cell.train_key in trains and cell.key not in chosen
            and store.cell_path("attack", cell.key).is_file()]


@dataclass
class RunSummary:
    """What one ``run`` did: cells run now, found stored, failed (with why) and skipped (their bundle failed).
    The attacks ``--attacks`` left out that it took on as their model had changed: ``added`` before the run (in
    ``GridRunner.plan``), ``queued`` in it (when a retraining turned out to be another model)."""

    ran: list[Cell] = field(default_factory=list)
    cached: int = 0
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    added: list[Cell] = field(default_factory=list)
    queued: list[Cell] = field(default_factory=list)

    @property
    def left_out(self) -> list[Cell]:
        """Every attack ``--attacks`` left out that the run took on, before it or in it."""
        return self.added + self.queued


class GridRunner:
    """Runs a plan's missing cells into a ``CellStore``.

    A slice (``--attacks``) must not leave a model with fewer stored attacks than it found. So the whole grid's
    attacks on the slice's trainings that ``--attacks`` left out are looked at too: one that attacked another
    model than its training's record holds (an earlier run retrained it and stopped before attacking it again)
    joins the slice's cells (``self.plan``; ``added``), and one that counts is ``watched``: queued as soon as a
    retraining in this run turns out to be another model. Left-out records broken otherwise are left alone."""

    def __init__(self, plan: Plan, store: CellStore, options: RunOptions, inherit_fds: Sequence[int] = (),
                 whole: Plan | None = None) -> None:
        """``inherit_fds``: descriptors every child keeps open, the run lock's (``CellStore.lock``). ``whole``: the
        grid ``plan`` is a slice of, if it is one. The store is read here: build the runner when the folder is as
        the run will find it (after a ``--reuse-from`` copy)."""
        self.store = store
        on_file = left_out_attacks(plan, whole, store) if whole is not None else []
        self.added = [cell for cell in on_file if store.attacked_another_model(cell.key)]
        for cell in self.added:
            logger.warning("attack %s (%s, left out by --attacks) attacked another model than train cell %s holds "
                           "now: attacking it again", cell.key, cell.attack, cell.train_key)
        taken = {cell.key for cell in [*plan.attack, *self.added]}  # in the grid's order, as a full run has them
        self.plan = replace(plan, attack=tuple(cell for cell in (plan if whole is None else whole).attack
                                                  if cell.key in taken))
        self.watched = [cell for cell in on_file if store.load("attack", cell.key) is not None]
        self.options = options
        self.children = _Children(inherit_fds)
        self._revision_unknown = threading.Event()  # warned once: cells run in several threads

    def plan_state(self, copies: Mapping[tuple[str, str], CellStore] | None = None
                   ) -> tuple[set[tuple[str, str]], set[str]]:
        """(cells stored and not to run now, keys of train cells to run again only to rebuild their bundle).

        A train cell whose record is stored without its bundle (a folder kept in git, ``experiment.store``) runs
        again when an attack still to run needs that bundle. ``copies``: the cells ``--reuse-from`` would copy,
        by the folder each would come from, so a dry run sees the folder as it will be after the copy."""
        copies = copies or {}
        records = {(cell.kind, cell.key) for cell in self.plan.runnable()
                   if (cell.kind, cell.key) in copies or self.store.load(cell.kind, cell.key) is not None}
        needed = {cell.train_key for cell in self.plan.attack if ("attack", cell.key) not in records}
        rebuild = {key for key in needed if ("train", key) in records
                   and not copies.get(("train", key), self.store).has_outputs("train", key)}
        return records - {("train", key) for key in rebuild}, rebuild

    def _revision(self, env: Mapping[str, str]) -> str | None:
        """The code revision of the cell about to start, looked up per cell (the tree may change during a long
        run); the first time it cannot be told, a warning says so and why that matters."""
        revision = code_revision(code_root(self.options.python, env))
        if revision is None and not self._revision_unknown.is_set():
            self._revision_unknown.set()
            logger.warning("cannot tell which code revision the cells run (their code is not the top of a git tree, "
                           "or git is missing or refuses it): their records say none (docs/experiments.md)")
        return revision

    def _stale_attacks(self, train_key: str, done: set[tuple[str, str]]) -> list[AttackCell]:
        """The stored attacks a (re)trained bundle invalidated: they attacked another model than it holds now."""
        return [cell for cell in self.plan.runnable() if isinstance(cell, AttackCell) and cell.train_key == train_key
                and ("attack", cell.key) in done and self.store.load("attack", cell.key) is None]

    def _requeue(self, train_key: str, done: set[tuple[str, str]], summary: RunSummary
                 ) -> tuple[list[AttackCell], list[AttackCell]]:
        """The attacks to run again now that ``train_key`` trained, the slice's and the ``watched`` ones: those
        stored on it that no longer count, as it is another model than they attacked. The slice's leave ``done``
        and ``summary.cached``; the watched ones join ``summary.queued``."""
        stale = self._stale_attacks(train_key, done)
        for cell in stale:
            logger.warning("train cell %s now holds another model than attack %s attacked: attacking it again",
                           train_key, cell.key)
            done.discard(("attack", cell.key))
            summary.cached -= 1
        watched_stale = [cell for cell in self.watched
                         if cell.train_key == train_key and self.store.load("attack", cell.key) is None]
        for cell in watched_stale:
            logger.warning("train cell %s now holds another model than attack %s (%s, left out by --attacks) "
                           "attacked: attacking it again too, or the model would lose it", train_key, cell.key,
                           cell.attack)
        summary.queued += watched_stale
        return stale, watched_stale

    def _command(self, cell: Cell, out: os.PathLike[str]) -> list[str]:
        o = self.options
        run = ["--device", o.device, "--threads", str(o.threads), "--out", os.fspath(out), "--json"]
        if isinstance(cell, TrainCell):
            data_dir = self.plan.data_dir_for(cell.dataset)
            data = ["--data-dir", data_dir] if data_dir else []
            return [o.python, "-m", TRAIN_MODULE, *cell.args, *data, *run, "--no-progress"]
        train = next(t for t in self.plan.train if t.key == cell.train_key)
        data_dir = self.plan.data_dir_for(train.dataset)
        data = ["--data-dir", data_dir] if data_dir else []
        bundle = self.store.output_dir("train", cell.train_key)
        return [o.python, "-m", ATTACK_MODULE, "--bundle", os.fspath(bundle), *cell.args, *data, *run]

    def execute(self, cell: Cell, slot: int) -> None:
        """Run one cell in a child process and store its record; ``CellFailed`` when it did not finish."""
        from cem.bundle import load_manifest  # loads torch; the report never needs it

        env = self.options.slot_env(slot)
        revision = self._revision(env)
        tmp = self.store.new_tmp_dir(cell.kind, cell.key)
        command = self._command(cell, tmp)
        log = self.store.log_path(cell.kind, cell.key)
        started = time.perf_counter()
        try:
            code, stdout = self.children.run(command, env, log)
            if code != 0:
                raise CellFailed(f"{'cem-train' if cell.kind == 'train' else 'cem-attack'} exited with status {code}; "
                                 f"see {log}")
            final = self.store.commit_dir(tmp, cell.kind, cell.key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        wall_s = time.perf_counter() - started
        shown = shlex.join(command[1:])
        try:
            if isinstance(cell, TrainCell):
                record = train_record(cell, load_manifest(final), _last_json(stdout), wall_s=wall_s, command=shown,
                                      code_revision=revision)
            else:
                result = json.loads((final / "metrics.json").read_text(encoding="utf-8"))
                record = attack_record(cell, result, wall_s=wall_s, command=shown, code_revision=revision)
        except (CEMError, OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CellFailed(f"cannot read the outputs of {cell.kind} cell {cell.key} in {final}: {exc}") from exc
        self.store.save(record)

    def run(self) -> RunSummary:
        """Run every missing cell, ``jobs`` at a time, attacks as soon as their bundle exists."""
        order = self.plan.runnable()
        done, rebuild = self.plan_state()
        if rebuild:
            logger.info("retraining %d bundle(s) the output folder holds records of but not weights: attacks still "
                        "to run need them", len(rebuild))
        summary = RunSummary(cached=len(done), added=list(self.added))
        pending = [cell for cell in order if (cell.kind, cell.key) not in done]
        failed_trains: set[str] = set()
        free = list(range(self.options.jobs))
        running: dict[Future[None], tuple[Cell, int]] = {}
        bar = tqdm(total=len(order), initial=len(done), desc=self.plan.name, unit="cell", file=sys.stderr,
                   disable=not self.options.progress, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="cell")
        try:
            while pending or running:
                for cell in list(pending):
                    if not free:
                        break
                    if isinstance(cell, AttackCell):
                        if cell.train_key in failed_trains:
                            pending.remove(cell)
                            summary.skipped.append(cell)
                            continue
                        if ("train", cell.train_key) not in done:
                            continue
                    pending.remove(cell)
                    slot = free.pop(0)
                    running[pool.submit(self.execute, cell, slot)] = (cell, slot)
                if not running:  # only attacks whose training never ran are left: nothing can start them
                    summary.skipped += pending
                    break
                bar.set_postfix_str(f"running {', '.join(f'{c.kind} {c.key}' for c, _ in running.values())}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell, slot = running.pop(future)
                    free.append(slot)
                    free.sort()
                    try:
                        future.result()
                    except CellFailed as exc:
                        logger.warning("%s cell %s (%s) failed: %s", cell.kind, cell.key, cell.describe(), exc)
                        summary.failed.append((cell, str(exc)))
                        if isinstance(cell, TrainCell):
                            failed_trains.add(cell.key)
                        continue
                    done.add((cell.kind, cell.key))
                    summary.ran.append(cell)
                    bar.update(1)
                    if isinstance(cell, TrainCell):
                        stale, left_out = self._requeue(cell.key, done, summary)
                        bar.update(-len(stale))
                        bar.total += len(left_out)
                        # First in line, ahead of the trainings still waiting: a model's attacks then end
                        # together, which a slice needs when its bundles go with the machine.
                        pending[:0] = stale + left_out
        except BaseException:
            self.children.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)
        return summary
