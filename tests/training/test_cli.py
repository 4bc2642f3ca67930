"""The ``cem-train`` command line: the --json contract and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cem.bundle import load_manifest
from training.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_json_flag_makes_the_last_stdout_line_a_result_object(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "--dataset", "digits", "--epochs", "2", "--width", "0.125",
         "--cem-lambda", "0.01", "--defense", "topk:0.25", "--noise-std", "0.05", "--seed", "1",
         "--threads", "1", "--out", str(out), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"accuracy", "model_id", "bundle", "entropy_bound"} <= set(result)
    manifest = load_manifest(result["bundle"])
    assert manifest.model_id == result["model_id"] and manifest.metrics["accuracy"] == result["accuracy"]
    assert manifest.noise_std == 0.05 and {"name": "topk", "ratio": 0.25} in manifest.defenses
    assert "train" in proc.stderr  # the progress bar goes to stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--defense", "blur:2"], "expected a defense in"),
        (["--defense", "dropout"], "expected 'dropout:<p>'"),
        (["--noise-std", "0", "--cem-lambda", "1"], "noise-std > 0 with CEM"),
        (["--dataset", "cifar10"], "needs --data-dir"),
    ],
)
def test_bad_configuration_exits_2_with_a_message(argv: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "b"), "--epochs", "1", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
