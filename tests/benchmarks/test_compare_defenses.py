"""benchmarks/compare_defenses.py: the rows' recipes, the paper's summary rows, and a resumable grid."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def grid() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports compare_cem as its neighbour
    try:
        spec = importlib.util.spec_from_file_location("compare_defenses", BENCHMARKS / "compare_defenses.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["compare_defenses"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def args(grid: ModuleType, *extra: str) -> object:
    return grid.get_args_parser().parse_args(["--out", "unused", *extra])


def test_each_row_is_its_papers_recipe_at_the_same_sigma_with_and_without_cem(grid: ModuleType) -> None:
    a = args(grid, "--noise-std", "0.1")
    rows = grid.ROWS
    assert rows["No_defense"].train_args(a, False) == ["--bottleneck", "none", "--noise-std", "0", "--cem-lambda", "0"]
    assert not rows["No_defense"].has_cem_variant
    assert rows["Bottleneck"].train_args(a, False) == ["--noise-std", "0.1", "--cem-lambda", "0"]
    assert rows["Bottleneck"].train_args(a, True) == ["--noise-std", "0.1"]  # the trainer's λ
    assert rows["DistCorr"].train_args(a, True) == ["--noise-std", "0.1", "--defense", "distcorr:0.3"]
    assert rows["Dropout"].train_args(a, False)[-2:] == ["--defense", "dropout:0.2"]
    assert rows["PATROL"].train_args(a, False)[-1] == "patrol:0.3,proxy_channels=16"
    assert rows["Noise_Nopeek"].train_args(a, False) == ["--noise-std", "0.2", "--cem-lambda", "0", "--defense",
                                                         "distcorr:0.3"]  # the noise rows' own σ
    assert rows["Noise_ARL"].train_args(args(grid, "--cem-lambda", "4"), True) == [
        "--noise-std", "0.2", "--cem-lambda", "4.0", "--defense", "ressfl:0.3,proxy_channels=16"]
    with pytest.raises(SystemExit, match="expected rows among"):
        grid.parse_rows("Bottleneck,NoPeek")


def test_cells_are_planned_seed_major_and_reused_only_with_equal_settings(grid: ModuleType, tmp_path: Path) -> None:
    rows = grid.parse_rows("No_defense,Bottleneck")
    cells = grid.plan_cells(rows, [0, 1])
    assert [c.key for c in cells] == ["no_defense-seed0", "bottleneck-seed0", "bottleneck+cem-seed0",
                                      "no_defense-seed1", "bottleneck-seed1", "bottleneck+cem-seed1"]
    a = args(grid)
    settings = grid.cell_settings(a, cells[1])
    stored = tmp_path / "cell.json"
    stored.write_text(json.dumps({"settings": settings, "accuracy": 0.9}))
    assert grid._stored(stored, settings) == {"settings": settings, "accuracy": 0.9}
    assert grid._stored(stored, grid.cell_settings(args(grid, "--decoder-epochs", "7"), cells[1])) is None
    assert "optimize_steps" in grid.cell_settings(args(grid, "--attacks", "decoder,optimize"), cells[1])
    assert "gan_critic_dim" not in settings  # recorded only when changed, so cells stored before it stay valid
    assert grid._stored(stored, grid.cell_settings(args(grid, "--gan-critic-dim", "8"), cells[1])) is None
    stored.write_text("{not json")
    assert grid._stored(stored, settings) is None


def test_the_average_rows_are_per_seed_means_over_the_defense_rows(grid: ModuleType) -> None:
    rows = grid.parse_rows("No_defense,Bottleneck,DistCorr")

    def cell(accuracy: float, train: float, infer: float, sigma: float = 0.1) -> dict:
        return {"accuracy": accuracy, "decoder_mse_train": train, "decoder_mse_infer": infer, "noise_std": sigma,
                "cem_lambda": 0.0, "epoch_cpu_s": 1.0, "run_cpu_s": 20.0}

    values = {  # (row, cem, seed) -> cell
        ("No_defense", False, 0): cell(0.99, 0.0001, 0.0002, 0.0),
        ("No_defense", False, 1): cell(0.99, 0.0001, 0.0002, 0.0),
        ("Bottleneck", False, 0): cell(0.98, 0.001, 0.002), ("Bottleneck", True, 0): cell(0.97, 0.002, 0.003),
        ("Bottleneck", False, 1): cell(0.96, 0.001, 0.002), ("Bottleneck", True, 1): cell(0.96, 0.003, 0.002),
        ("DistCorr", False, 0): cell(0.98, 0.003, 0.004), ("DistCorr", True, 0): cell(0.98, 0.003, 0.006),
        ("DistCorr", False, 1): cell(0.94, 0.001, 0.002), ("DistCorr", True, 1): cell(0.95, 0.002, 0.002),
    }
    results = {grid.Cell(r, c, s).key: {**v, "seed": s} for (r, c, s), v in values.items()}
    summary = grid.summarise(rows, [0, 1], results, ["decoder"])
    gain = summary["gain"]["Bottleneck"]
    assert gain["decoder_mse_train"]["mean"] == pytest.approx(150.0)  # +100 % and +200 %, paired
    assert gain["accuracy"]["mean"] == pytest.approx(-0.5)  # -1 and 0 points
    average = summary["average"]
    assert average["rows"] == ["Bottleneck", "DistCorr"]  # No_defense is not a defense row
    # per seed: without CEM train MSE (0.001 + 0.003)/2 = 0.002 and (0.001 + 0.001)/2 = 0.001
    assert average["without_cem"]["decoder_mse_train"]["mean"] == pytest.approx(0.0015)
    # with CEM (0.002 + 0.003)/2 = 0.0025 and (0.003 + 0.002)/2 = 0.0025: +25 % and +150 %, then their mean
    assert average["gain"]["decoder_mse_train"]["mean"] == pytest.approx(87.5)
    table = grid.format_table(summary, ["decoder"])
    assert "**Average w/o CEM**" in table and "CEM gain, DistCorr (paired)" in table
    assert "No_defense | 0 | 0 | 99.00" in table


@pytest.mark.e2e
@pytest.mark.slow
def test_a_tiny_grid_runs_in_workers_and_a_rerun_runs_nothing(
    grid: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the worker processes import the script by its name
    base = ["--out", str(tmp_path), "--rows", "No_defense,Bottleneck", "--seeds", "0", "--train-epochs", "1",
            "--decoder-epochs", "1", "--attack-channels", "8", "--attack-blocks", "0", "--device", "cpu",
            "--jobs", "2", "--json", "--train-arg=--width=0.25"]
    assert grid.main(base) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(first["variants"]) == {"No_defense", "Bottleneck", "Bottleneck+CEM"}
    stored = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()}
    assert len(stored) == 3 and all((tmp_path / "logs" / f"{Path(n).stem}.log").is_file() for n in stored)
    assert first["variants"]["Bottleneck"]["epoch_cpu_s"]["mean"] > 0

    grids = tmp_path / "grids"
    assert grid.main([*base, "--stored-only", "--grid", str(grids)]) == 0  # everything stored: nothing runs
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["variants"] == first["variants"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()} == stored
    # the grids come from the cells' stored samples: originals, without CEM, with CEM (No_defense has no +CEM row)
    assert sorted(p.name for p in grids.iterdir()) == ["bottleneck-decoder-infer.png", "bottleneck-decoder-train.png"]
    with Image.open(grids / "bottleneck-decoder-infer.png") as image:
        assert image.size == (8 * 34 + 2, 3 * 34 + 2)


def test_stored_samples_round_trip_when_the_attacks_share_the_originals(grid: ModuleType, tmp_path: Path) -> None:
    import torch

    originals = torch.rand(4, 1, 32, 32)  # every attack of a column scores the same tensor
    samples = {(attack, "train"): (originals, torch.rand(4, 1, 32, 32)) for attack in ("decoder", "gan", "optimize")}
    grid.save_samples(tmp_path / "cell.safetensors", samples)
    loaded = grid.load_samples(tmp_path / "cell.safetensors")
    assert set(loaded) == set(samples)
    for key, (stored, reconstructions) in loaded.items():
        assert torch.equal(stored, originals) and torch.equal(reconstructions, samples[key][1])
