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
    assert manifest.model_id == result["model_id"] and manifest.metrics.accuracy == result["accuracy"]
    assert manifest.noise_std == 0.05 and {"name": "topk", "ratio": 0.25} in manifest.defenses
    assert "train" in proc.stderr  # the progress bar goes to stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--defense", "blur:2"], "expected a defense in"),
        (["--defense", "dropout"], "expected 'dropout:<p>'"),
        (["--noise-std", "0", "--cem-lambda", "1"], "noise-std > 0 with CEM"),
        (["--dataset", "cifar10"], "needs --data-dir"),
        (["--bottleneck", "none", "--noise-std", "0.1", "--cem-lambda", "0"],
         "expected --noise-std 0 with --bottleneck none, got 0.1: Gaussian noise is only meaningful on the Sigmoid"),
        (["--bottleneck", "none", "--noise-std", "0", "--cem-lambda", "0.01"],
         "expected --cem-lambda 0 with --bottleneck none, got λ = 0.01: CEM needs Gaussian noise"),
        (["--bottleneck", "0"], "expected --bottleneck channels >= 1 or 'none', got 0"),
        (["--bottleneck", "-3"], "expected --bottleneck channels >= 1 or 'none', got -3"),
    ],
)
def test_bad_configuration_exits_2_with_a_message(argv: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "b"), "--epochs", "1", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_bottleneck_that_is_not_a_number_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bottleneck", "eight", "--out", str(tmp_path / "b")])
    assert info.value.code == 2
    assert "expected a channel count >= 1 or 'none', got 'eight'" in capsys.readouterr().err


def test_bottleneck_none_writes_the_no_defense_baseline(no_defense_bundle: Path) -> None:
    """The conftest fixture ran ``cem-train --bottleneck none --noise-std 0 --cem-lambda 0 --epochs 1``."""
    manifest = load_manifest(no_defense_bundle)
    raw = json.loads((no_defense_bundle / "manifest.json").read_text())
    assert raw["model"]["bottleneck_channels"] is None and raw["feature_shape"] == [16, 8, 8]  # 128 · 0.125
    assert manifest.model.bottleneck_channels is None and manifest.feature_shape == (16, 8, 8)
    assert manifest.defenses == [{"name": "bottleneck", "channels": None}]
    assert manifest.noise_std == 0.0 and manifest.cem is None
    assert isinstance(manifest.metrics.accuracy, float) and manifest.metrics.entropy_bound is None  # no σ, no bound
    assert "entropy_bound" not in raw["metrics"] and raw["cem"] is None
