"""``cem-experiment run`` refuses a bad spec with exit 2 before any cell runs, and reports a cell that fails at run
time with exit 1, its log, and nothing stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = (REPO / "experiments" / "smoke.toml").read_text()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def cem_experiment(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiment.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=240, check=False)


def write_spec(folder: Path, *changes: tuple[str, str]) -> Path:
    text = SMOKE
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = folder / "spec.toml"
    path.write_text(text)
    return path


def test_unknown_data_set_defense_and_attack_are_named_and_nothing_runs(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, ('datasets = ["digits"]', 'datasets = ["digitz"]'),
                      ('"dropout:0.2"', '"dropoot:0.2"'), ("[attacks.decoder]", "[attacks.decodr]"))
    done = cem_experiment("run", str(spec), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    for named in ("unknown data set 'digitz'", "unknown defense 'dropoot' in row 'Dropout'",
                  "unknown attack 'decodr' in [attacks.decodr]"):
        assert named in done.stderr
    assert done.stderr.startswith("cem-experiment: error: invalid experiment spec") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_settings_the_trainer_and_attacker_refuse_fail_with_their_messages(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, ('"dropout:0.2"', '"dropout:1.5"'),
                      ("network_blocks = 0", "network_blocks = 0\nsteps = 5"))
    done = cem_experiment("run", str(spec), "--out", str(tmp_path / "out"), "--dry-run")
    assert done.returncode == 2, done.stderr
    refusal = "cem-train refuses row 'Dropout' on digits (σ=0.1, λ=0): expected dropout p in (0, 1), got 1.5"
    assert refusal in done.stderr
    assert "cem-attack refuses [attacks.decoder]: expected optimize_steps only with the optimize" in done.stderr
    assert done.stderr.count("cem-train refuses") == 1  # once per row and refusal, not per λ and seed
    assert not (tmp_path / "out").exists()


def test_a_cell_that_fails_while_running_is_reported_with_its_log_and_not_stored(tmp_path: Path) -> None:
    empty = tmp_path / "no-faces"
    empty.mkdir()
    spec = write_spec(tmp_path, ('datasets = ["digits"]', f'datasets = ["facescrub"]\ndata_dir = "{empty}"'),
                      ('[[rows]]\nlabel = "Dropout"\ndefenses = ["dropout:0.2"]\n', ""),
                      ("cem_lambdas = [0, 2]", "cem_lambdas = [0]"))
    out = tmp_path / "out"
    done = cem_experiment("run", str(spec), "--out", str(out), "--device", "cpu", "--threads", "1", "--no-progress")
    assert done.returncode == 1, done.stderr
    assert "1 cells failed, rerun to retry them: train " in done.stderr and "cem-train exited with status 2" in \
        done.stderr and "1 attack cells skipped" in done.stderr
    (log,) = (out / "logs").glob("train-*.log")
    assert "facescrub" in log.read_text() and "# exit 2" in log.read_text()
    assert not list((out / "cells").iterdir()) and not list((out / "bundles").iterdir())
