"""The output folder of a run: cells stored atomically under their keys, and nothing else counts as done.

    DIR/experiment.json          the expanded grid of the last run (the report lays cells out by it)
    DIR/cells/train-<key>.json   one record per finished cell, written last (tmp + fsync + rename)
    DIR/cells/attack-<key>.json
    DIR/bundles/<key>/           the train cell's bundle (manifest, weights, train log)
    DIR/attacks/<key>/           the attack cell's metrics.json and reconstructions.png
    DIR/logs/<kind>-<key>.log    the cell's command line and its child's output, one file per cell
    DIR/report/                  what ``cem-experiment report`` writes

A train cell is done exactly when its record exists, parses and names its own
key. Its bundle is not part of that: the record holds everything a report needs
(accuracy, model id, bounds), and the weights (megabytes per model) are what a
folder kept in git leaves out (``results/``, see docs/experiments.md). The
runner rebuilds a missing bundle only when an attack still to run needs it;
training is deterministic on one machine's torch build at fixed threads, so there
the rebuilt model is the same model (the same ``model_id``, the weights' hash). On
another host it can be another model (seen 2026-12-03); the attacks on it then run
again, as below (docs/experiments.md, "Results kept in git").

An attack cell is done exactly when its record exists, parses, names its own
key, its ``metrics.json`` is still there, its train cell is done, and the model it
attacked (``model_id``) is the one that train cell's record holds now: a bundle
retrained into another model (on another machine, or after its record was
deleted to force a retrain) is a new model, and an old attack's MSE must not be
paired with the new accuracy. A cell killed half-way leaves only a ``.tmp-``
folder (or a ``cells/.tmp-`` record), which the next run deletes. Children write
into a temporary folder that is renamed into place when they succeed, so a
bundle or attack folder under its key is always complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cem.durable import TMP_PREFIX, write_durably
from cem.errors import CEMError, ConfigError
from experiment.cells import Cell, Plan

logger = logging.getLogger(__name__)

PLAN_FILE = "experiment.json"
LOCK_FILE = ".lock"
FOLDERS = ("cells", "bundles", "attacks", "logs")
# The file whose presence makes an output folder usable.
OUTPUT_MARKERS = {"train": "manifest.json", "attack": "metrics.json"}


class CellStore:
    """Paths, atomic writes and lookups of one output folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def cell_path(self, kind: str, key: str) -> Path:
        return self.root / "cells" / f"{kind}-{key}.json"

    def output_dir(self, kind: str, key: str) -> Path:
        """The bundle folder of a train cell, the results folder of an attack cell."""
        return self.root / ("bundles" if kind == "train" else "attacks") / key

    def log_path(self, kind: str, key: str) -> Path:
        return self.root / "logs" / f"{kind}-{key}.log"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def create(self) -> None:
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def has_outputs(self, kind: str, key: str) -> bool:
        """Whether the cell's output folder is complete: a usable bundle, or an attack's results."""
        return (self.output_dir(kind, key) / OUTPUT_MARKERS[kind]).is_file()

    def records(self, cells: Iterable[Cell]) -> dict[tuple[str, str], dict[str, Any] | None]:
        """Each cell's stored record (``load``) by (kind, key), None where it is not stored."""
        return {(cell.kind, cell.key): self.load(cell.kind, cell.key) for cell in cells}

    def load(self, kind: str, key: str) -> dict[str, Any] | None:
        """The stored record of a finished cell, or None: absent, unreadable, another cell's, an attack whose
        results are gone or whose model is no longer its train cell's (the module docstring)."""
        record = self._sound_record(kind, key)
        if record is None:
            return None
        if kind == "attack" and not self.has_outputs(kind, key):
            logger.warning("ignoring %s: its outputs in %s are gone (it will be rerun)", self.cell_path(kind, key),
                           self.output_dir(kind, key))
            return None
        if kind == "attack" and not self._attacks_current_bundle(record, key):
            return None
        return record

    def _sound_record(self, kind: str, key: str) -> dict[str, Any] | None:
        """The cell's record if its file is there, parses and names this cell; else None (warned if it is there)."""
        path = self.cell_path(kind, key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable cell %s (it will be rerun): %s", path, exc)
            return None
        if not isinstance(record, dict) or record.get("kind") != kind or record.get("key") != key:
            logger.warning("ignoring %s: it does not record cell %s-%s (it will be rerun)", path, kind, key)
            return None
        return record

    def attacked_another_model(self, key: str) -> bool:
        """Whether attack ``key``'s record is sound but attacked another model than its train cell's stored record
        holds now: how a retraining on another machine makes a stored attack stop counting (``GridRunner`` runs
        such an attack again even where ``--attacks`` leaves it out; no other broken record is its business)."""
        record = self._sound_record("attack", key)
        train = None if record is None else self._sound_record("train", str(record.get("train_key")))
        if record is None or train is None:
            return False
        return self._attacked_model(record, key) != train.get("model_id")

    def _attacks_current_bundle(self, record: dict[str, Any], key: str) -> bool:
        """Whether an attack record attacked the model its train cell holds now (see the module docstring)."""
        train = self.load("train", str(record.get("train_key")))
        if train is None:
            logger.info("ignoring attack %s: its train cell %s is not stored (both will be rerun)", key,
                        record.get("train_key"))
            return False
        attacked = self._attacked_model(record, key)
        if attacked != train.get("model_id"):
            logger.warning("ignoring attack %s: it attacked model %s, but train cell %s now holds model %s (it will "
                           "be rerun)", key, attacked, record.get("train_key"), train.get("model_id"))
            return False
        return True

    def _attacked_model(self, record: dict[str, Any], key: str) -> str | None:
        """The model id an attack record holds, else the one cem-attack recorded in the cell's ``metrics.json``
        (records before ``model_id`` lack it)."""
        if record.get("model_id"):
            return str(record["model_id"])
        try:
            result = json.loads((self.output_dir("attack", key) / OUTPUT_MARKERS["attack"]).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        details = result.get("details") if isinstance(result, dict) else None
        model_id = details.get("model_id") if isinstance(details, dict) else None
        return str(model_id) if model_id is not None else None

    def save(self, record: dict[str, Any]) -> Path:
        """Store a finished cell's record; the last step of a cell."""
        path = self.cell_path(str(record["kind"]), str(record["key"]))
        write_durably(path, (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
        return path

    def adoptable(self, source: CellStore, kind: str, key: str,
                  planned: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any] | None:
        """The record of the cell ``adopt`` would copy from ``source``, or None: ``source`` does not hold it
        (``load``'s checks), or it is an attack whose bundle this folder does not hold as ``source`` does.
        ``planned``: train records by key that a dry run would adopt first, taken as held here."""
        record = source.load(kind, key)
        if record is None:
            return None
        if kind == "attack":
            train_key = str(record.get("train_key"))
            ours = planned[train_key] if planned and train_key in planned else self.load("train", train_key)
            theirs = source.load("train", train_key)
            if ours is None or theirs is None or ours.get("model_id") != theirs.get("model_id"):
                return None
        return record

    def adopt(self, source: CellStore, kind: str, key: str) -> bool:
        """Copy a finished cell from another output folder: its outputs, its log, then its record (last, as a
        cell's own run writes it). Keys are the resolved configuration's, so the same key there is the same
        cell. False where ``adoptable`` finds nothing to copy: a train cell is adopted before its attacks."""
        record = self.adoptable(source, kind, key)
        if record is None:
            return False
        if source.has_outputs(kind, key):  # a train cell's bundle may have been left out (the module docstring)
            tmp = self.new_tmp_dir(kind, key)
            shutil.copytree(source.output_dir(kind, key), tmp, symlinks=True)
            self.commit_dir(tmp, kind, key)
        if source.log_path(kind, key).is_file():
            shutil.copy2(source.log_path(kind, key), self.log_path(kind, key))
        self.save(record)
        return True

    def new_tmp_dir(self, kind: str, key: str) -> Path:
        """A fresh folder beside the cell's final output folder, for the child to write into."""
        parent = self.output_dir(kind, key).parent
        parent.mkdir(parents=True, exist_ok=True)
        return parent / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"

    def commit_dir(self, tmp: Path, kind: str, key: str) -> Path:
        """Move a finished child's folder into place (replacing a leftover of an earlier, unrecorded attempt)."""
        final = self.output_dir(kind, key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def sweep_tmp(self) -> int:
        """Delete the temporary folders of cells that never finished and the temporary records of a crash in the
        middle of a record's write (a killed run); how many there were. Only under the run lock: a live run's
        children write into such folders."""
        swept = 0
        for folder in ("bundles", "attacks", "cells"):
            parent = self.root / folder
            if parent.is_dir():
                for leftover in parent.glob(f"{TMP_PREFIX}*"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
                    swept += 1
        for leftover in self.root.glob(f"{TMP_PREFIX}{PLAN_FILE}*"):
            leftover.unlink(missing_ok=True)
        return swept

    def write_plan(self, plan: Plan) -> None:
        write_durably(self.root / PLAN_FILE, (json.dumps(plan.to_dict(), indent=2) + "\n").encode())

    def read_plan(self) -> Plan:
        path = self.root / PLAN_FILE
        if not path.is_file():
            raise ConfigError(f"expected {path}, written by `cem-experiment run`, but it does not exist")
        try:
            return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"expected the experiment plan in {path}, got an unreadable file: {exc}") from exc

    @contextlib.contextmanager
    def lock(self) -> Iterator[int]:
        """Hold the folder for one run: two runs writing the same cells would undo each other's temporaries.

        Yields the lock file's descriptor: the runner hands it to every child (``pass_fds``), and an flock
        belongs to the open file, not the process, so the lock stays held while any child lives, even when
        this process was SIGKILLed; a rerun then refuses the folder instead of sweeping a live child's
        temporary folder and starting its cell a second time."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CEMError(f"another cem-experiment run (or a cell it started) is using {self.root}; wait for "
                               "it or stop it") from None
            try:
                yield handle.fileno()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
