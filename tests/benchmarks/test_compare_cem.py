"""benchmarks/compare_cem.py: the gain arithmetic and an end-to-end run on prepared bundles."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from bundle_fixtures import write_digits_bundle
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_cem.py"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_cem", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_cem"] = module
    spec.loader.exec_module(module)
    return module


def test_gain_is_paired_per_seed_with_an_interval(compare: ModuleType) -> None:
    base = [{"accuracy": 0.90, "decoder_mse_infer": 0.010, "decoder_ssim": 0.80, "xi_relative": 0.02},
            {"accuracy": 0.92, "decoder_mse_infer": 0.020, "decoder_ssim": 0.70, "xi_relative": 0.02}]
    cem = [{"accuracy": 0.89, "decoder_mse_infer": 0.0125, "decoder_ssim": 0.75, "xi_relative": 0.03},
           {"accuracy": 0.90, "decoder_mse_infer": 0.030, "decoder_ssim": 0.70, "xi_relative": 0.03}]
    gain = compare.compute_gain(base, cem, ["decoder", "gan"])
    assert gain["decoder_mse_infer"]["mean"] == pytest.approx(37.5)  # +25 % and +50 %, paired
    assert gain["decoder_mse_infer"]["ci95"] == pytest.approx(12.706 * 12.5, rel=1e-3)  # t(0.975, 1) · sem
    assert gain["xi_relative"]["mean"] == pytest.approx(50.0)
    assert gain["accuracy"]["mean"] == pytest.approx(-1.5) and gain["decoder_ssim"]["mean"] == pytest.approx(-0.025)
    assert "gan_mse_train" not in gain
    results = {"sigma": compare.summarise_rows(base), "sigma+cem": compare.summarise_rows(cem)}
    table = compare.format_table(results, gain, ["decoder", "gan"])
    assert "+38 ± 159%" in table and "-1.50 ± 6.35 pt" in table and "n/a" in table


@pytest.mark.e2e
@pytest.mark.slow
def test_end_to_end_on_prepared_bundles(compare: ModuleType, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {"accuracy": 0.5, "entropy_bound": -20.0, "mse_bound_xi": 0.03, "mean_image_mse": 0.046,
               "entropy_bound_estimate": -120.0, "mse_bound_xi_estimate": 0.0001, "native_dim": 64.0,
               "entropy_x_estimate": -100.0, "mean_image_mse_native": 0.04}
    write_digits_bundle(tmp_path / "sigma-seed0", 0.1, metrics=metrics)
    write_digits_bundle(tmp_path / "sigma+cem-seed0", 0.1, metrics=metrics, cem={"lam": 2.0})
    attacks = ["decoder", "gan", "optimize", "decoder+optimize"]
    # a narrow GAN critic: at the paper's width its one epoch cost half of this test's CPU time
    code = compare.main(["--out", str(tmp_path), "--reuse", "--decoder-epochs", "1", "--gan-epochs", "1",
                         "--gan-critic-dim", "8", "--attack-blocks", "0", "--attack-channels", "8", "--device", "cpu",
                         "--json", "--attacks", ",".join(attacks), "--optimize-steps", "2",
                         "--grid", str(tmp_path / "grids")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert any(line.startswith("CEM gain") for line in lines)
    assert any("GAN 1 epochs, critic width 8, " in line for line in lines)  # a narrowed critic is said so
    assert summary["results"]["sigma+cem"]["cem_lambda"]["mean"] == 2.0
    for variant in ("sigma", "sigma+cem"):
        row = summary["results"][variant]
        columns = compare.mse_columns(attacks)
        assert all(0 < row[column]["mean"] < 1 and row[column]["n"] == 1 for column in columns)
        seed_row = summary["per_seed"][variant][0]
        for mode in ("train", "infer"):
            scored = {a: seed_row[f"{compare.attack_key(a)}_mse_{mode}"] for a in attacks}
            assert seed_row[f"worst_mse_{mode}"] == min(scored.values())
            assert scored[seed_row[f"worst_attack_{mode}"]] == min(scored.values())
            assert all(0 <= seed_row[f"{compare.attack_key(a)}_attack_accuracy_{mode}"] <= 1 for a in attacks)
            assert seed_row[f"optimize_epochs_{mode}"] == 2  # an optimisation's budget: its steps
        assert row["xi_relative"]["mean"] == 0.03 and row["xi_estimate"]["mean"] == 0.0001
        seed_row = summary["per_seed"][variant][0]
        assert seed_row["decoder_best_epoch_train"] in (0, 1) and seed_row["decoder_epochs_train"] == 1
    assert set(summary["gain"]) >= {"accuracy", *compare.mse_columns(attacks), "worst_mse_train", "xi_relative",
                                    "xi_estimate", "hybrid_attack_accuracy_infer"}
    assert any(line.startswith("worst case: sigma train: ") for line in lines)
    assert (tmp_path / "summary.json").is_file()
    with Image.open(tmp_path / "grids" / "decoder-infer.png") as grid:  # originals, σ only, σ + CEM; 8 columns
        assert grid.size == (8 * 34 + 2, 3 * 34 + 2)
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == sorted(
        f"{compare.attack_key(a)}-{m}.png" for a in attacks for m in ("train", "infer"))
