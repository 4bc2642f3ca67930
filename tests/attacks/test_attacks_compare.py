"""benchmarks/compare_cem.py: the gain arithmetic and an end-to-end run on prepared bundles."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from attack_helpers import write_digits_bundle

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_cem.py"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_cem", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_cem"] = module
    spec.loader.exec_module(module)
    return module


def test_gain_is_relative_for_mse_and_in_points_for_accuracy(compare: ModuleType) -> None:
    base = {"accuracy": 0.90, "decoder_mse_infer": 0.010, "decoder_ssim": 0.80, "mse_bound_xi": 0.02}
    cem = {"accuracy": 0.89, "decoder_mse_infer": 0.0125, "decoder_ssim": 0.75, "mse_bound_xi": 0.03}
    gain = compare.compute_gain(base, cem)
    assert gain["decoder_mse_infer"] == pytest.approx(25.0)
    assert gain["mse_bound_xi"] == pytest.approx(50.0)
    assert gain["accuracy"] == pytest.approx(-1.0)
    assert gain["decoder_ssim"] == pytest.approx(-0.05)
    assert "gan_mse_train" not in gain
    table = compare.format_table({"sigma": base, "sigma+cem": {**cem, "cem_lambda": 2.0}}, gain)
    assert "+25.0%" in table and "-1.00 pt" in table and "n/a" in table


def test_end_to_end_on_prepared_bundles(compare: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {"accuracy": 0.5, "entropy_bound": -20.0, "mse_bound_xi": 0.03}
    write_digits_bundle(tmp_path / "sigma-seed0", 0.1, metrics=metrics)
    write_digits_bundle(tmp_path / "sigma+cem-seed0", 0.1, metrics=metrics, cem={"lam": 2.0})
    code = compare.main(["--out", str(tmp_path), "--reuse", "--decoder-epochs", "1", "--gan-epochs", "1",
                         "--attack-blocks", "0", "--attack-channels", "8", "--device", "cpu", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert any(line.startswith("CEM gain") for line in lines)
    assert summary["results"]["sigma+cem"]["cem_lambda"] == 2.0
    for variant in ("sigma", "sigma+cem"):
        row = summary["results"][variant]
        assert all(0 < row[column] < 1 for column in compare.MSE_COLUMNS)
        assert row["mse_bound_xi"] == 0.03
    assert set(summary["gain"]) >= {"accuracy", *compare.MSE_COLUMNS, "mse_bound_xi"}
    assert (tmp_path / "summary.json").is_file()
