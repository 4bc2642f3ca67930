"""The report from hand-made stored cells: Table 1's means and intervals, the paired gains and the paper's average
rows checked against numbers computed by hand; the files, plots and page written from them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from experiment.cells import AttackCell, Plan, TrainCell
from experiment.html import render_html
from experiment.plots import plot_galleries, plot_mse_vs_entropy, plot_pareto
from experiment.report import build_table1, collect, convergence_flags
from experiment.store import CellStore
from experiment.tables import render_markdown, write_tables

T_975_1 = 12.706204736174698  # Student t quantile, 1 degree of freedom (two seeds)
ROWS = ("No_defense", "Bottleneck", "DistCorr")
# (row, σ, λ, seed) -> (accuracy, decoder MSE train column, decoder MSE infer column)
NUMBERS = {
    ("No_defense", 0.0, 0.0, 0): (0.99, 0.0001, 0.0002), ("No_defense", 0.0, 0.0, 1): (0.98, 0.0001, 0.0003),
    ("Bottleneck", 0.1, 0.0, 0): (0.97, 0.0010, 0.0020), ("Bottleneck", 0.1, 0.0, 1): (0.95, 0.0012, 0.0022),
    ("Bottleneck", 0.1, 2.0, 0): (0.96, 0.0020, 0.0030), ("Bottleneck", 0.1, 2.0, 1): (0.95, 0.0018, 0.0026),
    ("DistCorr", 0.1, 0.0, 0): (0.94, 0.0030, 0.0040), ("DistCorr", 0.1, 0.0, 1): (0.92, 0.0034, 0.0038),
    ("DistCorr", 0.1, 2.0, 0): (0.95, 0.0036, 0.0050), ("DistCorr", 0.1, 2.0, 1): (0.91, 0.0040, 0.0042),
}
FLAGGED = ("Bottleneck", 0.1, 2.0, 1)  # its train column's attack did not converge


def key(row: str, lam: float, seed: int) -> str:
    return f"{row.lower()}{int(lam)}s{seed}"


def make_store(root: Path, skip_attack: tuple[str, float, float, int] | None = None) -> tuple[Plan, CellStore]:
    """A plan of three rows x two seeds with every cell stored as the runner stores it (``skip_attack``: one not)."""
    store = CellStore(root)
    store.create()
    trains, attacks = [], []
    for (row, sigma, lam, seed), (accuracy, mse_train, mse_infer) in NUMBERS.items():
        train = TrainCell(key(row, lam, seed), "digits", "vgg11_bn_sgm", 4, row, sigma, lam, seed, (), {})
        attack = AttackCell(f"a{train.key}", train.key, "decoder", seed, (), {})
        trains.append(train)
        attacks.append(attack)
        store.output_dir("train", train.key).mkdir(parents=True)
        (store.output_dir("train", train.key) / "manifest.json").write_text("{}")
        store.save({"kind": "train", "key": train.key, "accuracy": accuracy,
                    "metrics": {"entropy_bound": None if sigma == 0 else -20.0 - 5 * lam - seed}})
        if (row, sigma, lam, seed) == skip_attack:
            continue
        outputs = store.output_dir("attack", attack.key)
        outputs.mkdir(parents=True)
        (outputs / "metrics.json").write_text("{}")
        Image.new("L", (60, 30), color=128).save(outputs / "reconstructions.png")
        note = "best epoch is its last (5 of 5)" if (row, sigma, lam, seed) == FLAGGED else None
        store.save({"kind": "attack", "key": attack.key,
                    "metrics": {"train": {"mse": mse_train}, "infer": {"mse": mse_infer}},
                    "columns": {"train": {"not_converged": note}, "infer": {"not_converged": None}}})
    plan = Plan("hand-made", ROWS, ("decoder",), tuple(trains), tuple(attacks), {})
    store.write_plan(plan)
    return plan, store


def test_means_intervals_paired_gains_and_the_paper_averages_match_a_hand_computation(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path)
    collected = collect(store.read_plan(), store)
    assert len(collected.observations) == 10 and not collected.missing
    table = build_table1(collected.observations, plan.rows, plan.attacks)

    labels = [(v.label, v.sigma, v.cem_lambda) for v in table.variants]
    assert labels == [("No_defense", 0.0, 0.0), ("Bottleneck", 0.1, 0.0), ("Bottleneck+CEM", 0.1, 2.0),
                      ("DistCorr", 0.1, 0.0), ("DistCorr+CEM", 0.1, 2.0)]
    bottleneck = table.variants[1].estimates["accuracy"]
    assert bottleneck is not None and bottleneck.n == 2
    assert bottleneck.mean == pytest.approx(0.96)
    assert bottleneck.half_width == pytest.approx(T_975_1 * 0.01)  # sd 0.01·√2 over √2 seeds

    gains = {g.row: g for g in table.gains}
    assert set(gains) == {"Bottleneck", "DistCorr"}  # No_defense has no CEM variant
    train_gain = gains["Bottleneck"].estimates["decoder_mse_train"]
    assert train_gain is not None and train_gain.mean == pytest.approx(75.0)  # +100 % and +50 %, per seed
    assert train_gain.half_width == pytest.approx(T_975_1 * 25.0)  # sd 25·√2 over √2 seeds
    accuracy_gain = gains["DistCorr"].estimates["accuracy"]
    assert accuracy_gain is not None and accuracy_gain.mean == pytest.approx(-0.0)  # +1 and -1 point

    (average,) = table.averages
    assert average.pairs == (("Bottleneck", 0.1), ("DistCorr", 0.1))  # No_defense excluded
    without, with_cem = average.without_cem["decoder_mse_train"], average.with_cem["decoder_mse_train"]
    assert without is not None and with_cem is not None
    assert without.mean == pytest.approx((0.0020 + 0.0023) / 2)  # per seed: (0.0010+0.0030)/2, (0.0012+0.0034)/2
    assert with_cem.mean == pytest.approx((0.0028 + 0.0029) / 2)
    assert average.gain["decoder_mse_train"] == pytest.approx(100 * (0.00285 - 0.00215) / 0.00215)  # +32.56 %
    assert average.gain["decoder_mse_infer"] == pytest.approx(100 * (0.0037 - 0.0030) / 0.0030)
    assert average.gain["accuracy"] == pytest.approx(100 * (0.9425 - 0.945))  # -0.25 points

    flags = convergence_flags(collected.observations)
    assert [(f["row"], f["cem_lambda"], f["seed"], f["column"]) for f in flags] == [("Bottleneck", 2.0, 1, "train")]
    markdown = render_markdown(table, "hand-made")
    assert "Bottleneck+CEM | 0.1 | 2 | 2 | 95.50 ± 6.35 | 0.00190 ± 0.00127 †" in markdown
    assert "CEM gain, Bottleneck (paired) | 0.1 | 2 | 2 | -0.50 ± 6.35 pt | +75.0 ± 317.7 %" in markdown
    assert "**Average w/o CEM** |  | 0 | 2 | 94.50 ± 12.71 | 0.00215 ± 0.00191 † | 0.00300 ± 0.00000\n" in markdown
    assert average.not_converged == {"accuracy": 0, "decoder_mse_train": 1, "decoder_mse_infer": 0}
    assert "**CEM gain of the averages** |  | 2 |  | -0.25 pt | +32.6 % | +23.3 %" in markdown


def test_the_averages_cover_only_seeds_every_row_has(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path, skip_attack=("DistCorr", 0.1, 2.0, 1))
    collected = collect(store.read_plan(), store)
    missing = f"attack a{key('DistCorr', 2.0, 1)}: decoder on digits · vgg11_bn_sgm cut 4 | DistCorr σ=0.1 λ=2 seed 1"
    assert collected.missing == [missing]
    (average,) = build_table1(collected.observations, plan.rows, plan.attacks).averages
    without = average.without_cem["decoder_mse_train"]
    assert without is not None and without.n == 1 and without.mean == pytest.approx(0.0020)  # seed 0 only
    accuracy = average.without_cem["accuracy"]
    assert accuracy is not None and accuracy.n == 2  # every model has its accuracy


def test_tables_plots_and_page_are_written_from_the_store(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path)
    collected = collect(plan, store)
    table = build_table1(collected.observations, plan.rows, plan.attacks)
    paths = write_tables(table, store.report_dir, plan.name, {"name": plan.name})
    with open(paths["csv"], newline="") as handle:
        records = list(csv.DictReader(handle))
    gain = next(r for r in records if r["line"] == "average_gain")
    assert float(gain["decoder_mse_train_mean"]) == pytest.approx(32.5581, abs=1e-3)
    no_defense = next(r for r in records if r["method"] == "No_defense")
    assert float(no_defense["accuracy_mean"]) == pytest.approx(0.985) and float(no_defense["accuracy_ci95"]) > 0
    data = json.loads(paths["json"].read_text())
    assert data["groups"][0]["averages"][0]["gain_units"] == {"accuracy": "points", "decoder_mse_train": "percent",
                                                              "decoder_mse_infer": "percent"}
    figures = [plot_pareto(collected.observations, plan.attacks, store.report_dir),
               plot_mse_vs_entropy(collected.observations, plan.attacks, store.report_dir)]
    galleries = plot_galleries(collected.observations, plan.attacks, store, store.report_dir)
    assert [title for title, _ in galleries] == [f"{row} · digits · vgg11_bn_sgm cut 4" for row in ROWS]
    for written in [*figures, *(paths for _, paths in galleries)]:
        assert [p.suffix for p in written] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in written)
    page = render_html(name=plan.name, table=table, figures=[("pareto", figures[0][0])],
                       galleries=[(t, p[0]) for t, p in galleries], flags=convergence_flags(collected.observations),
                       missing=[], stored=20, spec_text="<script>alert(1)</script>")
    assert page.count("data:image/png;base64,") == 4
    assert "<script>" not in page and "&lt;script&gt;" in page  # autoescaped
    assert "best epoch is its last (5 of 5)" in page
