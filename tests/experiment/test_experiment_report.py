"""The report from hand-made stored cells: Table 1's means and intervals, the paired gains and the paper's average
rows checked against numbers computed by hand; the files, plots and page written from them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.colors
import pytest
from PIL import Image

from experiment import cli as experiment_cli
from experiment.cells import AttackCell, Plan, TrainCell
from experiment.html import render_html
from experiment.plots import (
    cem_steps,
    pareto_means,
    plot_galleries,
    plot_mse_vs_entropy,
    plot_panels,
    plot_pareto,
    row_colours,
    sigma_labels,
)
from experiment.report import (
    Observation,
    build_table1,
    collect,
    convergence_flags,
    scored_attacks,
    unjudged_columns,
    with_strongest,
)
from experiment.store import CellStore
from experiment.tables import render_markdown, summary_line, write_tables

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


Model = tuple[str, float, float, int]


def make_store(root: Path, skip_attack: Model | None = None, flagged: Model | None = FLAGGED,
               train_mse: dict[Model, float] | None = None,
               unjudged: Model | None = None) -> tuple[Plan, CellStore]:
    """A plan of three rows x two seeds with every cell stored as the runner stores it (``skip_attack``: one not;
    ``flagged``: the model whose train column did not converge; ``train_mse``: train-column MSEs to store instead;
    ``unjudged``: the model whose infer column had no validation images)."""
    store = CellStore(root)
    store.create()
    trains, attacks = [], []
    for model, (accuracy, mse_train, mse_infer) in NUMBERS.items():
        row, sigma, lam, seed = model
        train = TrainCell(key(row, lam, seed), "digits", "vgg11_bn_sgm", 4, row, sigma, lam, seed, (), {})
        attack = AttackCell(f"a{train.key}", train.key, "decoder", seed, (), {})
        trains.append(train)
        attacks.append(attack)
        store.output_dir("train", train.key).mkdir(parents=True)
        (store.output_dir("train", train.key) / "manifest.json").write_text("{}")
        store.save({"kind": "train", "key": train.key, "accuracy": accuracy, "model_id": f"model-{train.key}",
                    "metrics": {"entropy_bound": None if sigma == 0 else -20.0 - 5 * lam - seed}})
        if model == skip_attack:
            continue
        outputs = store.output_dir("attack", attack.key)
        outputs.mkdir(parents=True)
        (outputs / "metrics.json").write_text("{}")
        Image.new("L", (60, 30), color=128).save(outputs / "reconstructions.png")
        note = "best epoch is its last (5 of 5)" if model == flagged else None
        why = "no validation images: its convergence was not judged" if model == unjudged else None
        store.save({"kind": "attack", "key": attack.key, "train_key": train.key, "model_id": f"model-{train.key}",
                    "metrics": {"train": {"mse": (train_mse or {}).get(model, mse_train)},
                                "infer": {"mse": mse_infer}},
                    "columns": {"train": {"not_converged": note}, "infer": {"not_converged": None, "unjudged": why}}})
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
    # the flagged model is behind the Bottleneck gain and the average gain: both marked, not only its variant line
    assert "CEM gain, Bottleneck (paired) | 0.1 | 2 | 2 | -0.50 ± 6.35 pt | +75.0 ± 317.7 % † | " in markdown
    assert "CEM gain, DistCorr (paired) | 0.1 | 2 | 2 | +0.00 ± 12.71 pt | +18.8 ± 14.9 % | +17.8 ± 92.0 %\n" \
        in markdown
    assert "**CEM gain of the averages** |  | 2 |  | -0.25 pt | +32.6 % † | +23.3 %\n" in markdown
    assert gains["Bottleneck"].not_converged == {"accuracy": 0, "decoder_mse_train": 1, "decoder_mse_infer": 0}
    (line,) = summary_line(table)
    assert "decoder_mse_train +32.6 % (1 not converged †), decoder_mse_infer +23.3 %" in line


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
    markdown = render_markdown(build_table1(collected.observations, plan.rows, plan.attacks), "hand-made")
    # the "seeds" column counts models; a value standing on fewer says so
    assert "DistCorr+CEM | 0.1 | 2 | 2 | 93.00 ± 25.41 | 0.00360 (n=1) | 0.00500 (n=1)\n" in markdown
    assert "**Average w/o CEM** |  | 0 | 2 | 94.50 ± 12.71 | 0.00200 (n=1) | 0.00300 (n=1)\n" in markdown


def test_a_flag_on_the_baseline_side_marks_the_gain_and_is_counted_in_csv_and_json(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path, flagged=("DistCorr", 0.1, 0.0, 0))  # the λ = 0 model, not the CEM one
    collected = collect(plan, store)
    table = build_table1(collected.observations, plan.rows, plan.attacks)
    markdown = render_markdown(table, "hand-made")
    assert "DistCorr+CEM | 0.1 | 2 | 2 | 93.00 ± 25.41 | 0.00380 ± 0.00254 | " in markdown  # its own line is clean
    assert "CEM gain, DistCorr (paired) | 0.1 | 2 | 2 | +0.00 ± 12.71 pt | +18.8 ± 14.9 % † | " in markdown
    paths = write_tables(table, store.report_dir, plan.name, {"name": plan.name})
    with open(paths["csv"], newline="") as handle:
        records = {(r["line"], r["row"]): r for r in csv.DictReader(handle)}
    assert records[("paired_gain", "DistCorr")]["decoder_mse_train_not_converged"] == "1"
    assert records[("paired_gain", "Bottleneck")]["decoder_mse_train_not_converged"] == "0"
    assert records[("average_gain", "")]["decoder_mse_train_not_converged"] == "1"
    assert records[("average_gain", "")]["decoder_mse_infer_not_converged"] == "0"
    data = json.loads(paths["json"].read_text())
    gains = {g["row"]: g for g in data["groups"][0]["paired_gains"]}
    assert gains["DistCorr"]["not_converged"]["decoder_mse_train"] == 1
    assert data["groups"][0]["averages"][0]["not_converged"]["decoder_mse_train"] == 1


def test_a_non_finite_mse_is_left_out_and_listed_instead_of_failing_the_report(tmp_path: Path) -> None:
    diverged = ("DistCorr", 0.1, 2.0, 1)
    plan, store = make_store(tmp_path, train_mse={diverged: float("nan")})
    collected = collect(plan, store)
    assert [(n["row"], n["seed"], n["metric"], n["value"]) for n in collected.nonfinite] == [
        ("DistCorr", 1, "decoder_mse_train", "nan")]
    table = build_table1(collected.observations, plan.rows, plan.attacks)  # mean_interval refuses NaN
    variant = next(v for v in table.variants if v.label == "DistCorr+CEM")
    estimate = variant.estimates["decoder_mse_train"]
    assert estimate is not None and estimate.n == 1 and estimate.mean == pytest.approx(0.0036)
    extra = {"name": plan.name, "nonfinite": collected.nonfinite}
    paths = write_tables(table, store.report_dir, plan.name, extra)
    note = "non-finite MSE (nan), left out: digits · vgg11_bn_sgm cut 4 | DistCorr σ=0.1 λ=2 seed 1 / decoder / train"
    assert note in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["nonfinite"][0]["value"] == "nan"
    page = render_html(name=plan.name, table=table, figures=[], galleries=[], flags=[], missing=[], stored=20,
                       spec_text="", nonfinite=collected.nonfinite)
    assert "non-finite MSE (nan)" in page and "DistCorr σ=0.1 λ=2 seed 1" in page


def test_unjudged_columns_are_listed_apart_from_converged_ones(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path, unjudged=("Bottleneck", 0.1, 0.0, 0))
    collected = collect(plan, store)
    unjudged = unjudged_columns(collected.observations)
    assert [(u["row"], u["seed"], u["column"]) for u in unjudged] == [("Bottleneck", 0, "infer")]
    table = build_table1(collected.observations, plan.rows, plan.attacks)
    markdown = render_markdown(table, "hand-made", unjudged=unjudged)
    assert "1 attack column(s) had no validation images, so their convergence was not judged" in markdown
    page = render_html(name=plan.name, table=table, figures=[], galleries=[], flags=[], missing=[], stored=20,
                       spec_text="", unjudged=unjudged)
    assert "1 attack column(s) had no validation images" in page


def test_a_seed_with_a_zero_baseline_mse_is_left_out_of_its_paired_gain_and_said_so(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path, train_mse={("Bottleneck", 0.1, 0.0, 1): 0.0})
    collected = collect(plan, store)
    table = build_table1(collected.observations, plan.rows, plan.attacks)
    gain = next(g for g in table.gains if g.row == "Bottleneck")
    estimate = gain.estimates["decoder_mse_train"]
    assert estimate is not None and estimate.n == 1 and gain.zero_baseline["decoder_mse_train"] == 1
    markdown = render_markdown(table, "hand-made")
    assert "+100.0 % (n=1) †" in markdown
    assert ("CEM gain, Bottleneck σ=0.1 λ=2: 1 seed(s) left out of decoder_mse_train (their λ = 0 MSE is 0, so there "
            "is no relative change)") in markdown


def observation(row: str, lam: float, seed: int, values: dict[str, float], flags: dict[str, str] | None = None
                ) -> Observation:
    return Observation("g", row, 0.1, lam, seed, f"{row}{lam}{seed}", values, flags=flags or {})


def test_the_paper_headline_is_the_gain_of_the_averages_meaned_over_the_attacks(tmp_path: Path) -> None:
    # one row, two attacks, one seed: decoder train MSE 0.010 -> 0.012 (+20 %), GAN 0.010 -> 0.015 (+50 %)
    base = {"accuracy": 0.9, "decoder_mse_train": 0.010, "decoder_mse_infer": 0.02, "gan_mse_train": 0.010,
            "gan_mse_infer": 0.02}
    cem = {"accuracy": 0.9, "decoder_mse_train": 0.012, "decoder_mse_infer": 0.02, "gan_mse_train": 0.015,
           "gan_mse_infer": 0.03}
    observations = [observation("Bottleneck", 0.0, 0, base),
                    observation("Bottleneck", 2.0, 0, cem, {"gan_mse_train": "best epoch is its last"})]
    table = build_table1(observations, ("Bottleneck",), ("decoder", "gan"))
    (block,) = table.averages
    assert block.gain["decoder_mse_train"] == pytest.approx(20.0) and block.gain["gan_mse_train"] == pytest.approx(50)
    assert block.attack_mean_gain["train"] == pytest.approx(35.0)  # the paper's "average increase" per column
    assert block.attack_mean_gain["infer"] == pytest.approx(25.0)
    assert block.attack_mean_not_converged == {"train": 1, "infer": 0}
    assert "mean over the attacks (the paper's headline), λ=2: train +35.0 % †, infer +25.0 %" in \
        render_markdown(table, "two attacks")
    paths = write_tables(table, tmp_path, "two attacks", {})
    with open(paths["csv"], newline="") as handle:
        (headline,) = [r for r in csv.DictReader(handle) if r["line"] == "average_gain_mean_over_attacks"]
    assert float(headline["mse_train_mean"]) == pytest.approx(35.0) and headline["mse_train_not_converged"] == "1"
    assert "; mean over the attacks: train +35.0 % (1 not converged †), infer +25.0 %" in summary_line(table)[0]
    assert "seeds:" not in render_markdown(table, "two attacks")  # both attacks' averages stand on the same seed

    # a second seed with only its decoder cells stored (the GAN half under way): the headline says it mixes models
    decoder_only = {"accuracy": 0.9, "decoder_mse_train": 0.010, "decoder_mse_infer": 0.02}
    partial = build_table1([*observations, observation("Bottleneck", 0.0, 1, decoder_only),
                            observation("Bottleneck", 2.0, 1, {**decoder_only, "decoder_mse_train": 0.014})],
                           ("Bottleneck",), ("decoder", "gan"))
    (block,) = partial.averages
    assert block.attack_mean_gain["train"] == pytest.approx((30.0 + 50.0) / 2)  # decoder on 2 seeds, GAN on 1
    assert ("(the paper's headline), λ=2: train +40.0 % † (seeds: Dec. 2, GAN 1), infer +25.0 % (seeds: Dec. 2, "
            "GAN 1)") in render_markdown(partial, "two attacks")
    assert "train +40.0 % (1 not converged †) (seeds: Dec. 2, GAN 1)" in summary_line(partial)[0]


def test_the_strongest_attack_is_each_models_lowest_mse_flagged_by_any_attack_behind_it(tmp_path: Path) -> None:
    # two seeds of one row: the GAN wins infer on both models; train it ties with the decoder (it never beat its
    # start) on seed 0 and loses on seed 1; seed 1 with CEM has no GAN infer number, so no strongest there
    def numbers(decoder: tuple[float, float], gan: tuple[float, float | None]) -> dict[str, float]:
        values = {"accuracy": 0.9, "decoder_mse_train": decoder[0], "decoder_mse_infer": decoder[1],
                  "gan_mse_train": gan[0]}
        return values if gan[1] is None else {**values, "gan_mse_infer": gan[1]}

    observations = [
        observation("Bottleneck", 0.0, 0, numbers((0.010, 0.020), (0.010, 0.018))),
        observation("Bottleneck", 0.0, 1, numbers((0.012, 0.022), (0.013, 0.021)), {"gan_mse_train": "still"}),
        observation("Bottleneck", 2.0, 0, numbers((0.020, 0.030), (0.020, 0.027))),
        observation("Bottleneck", 2.0, 1, numbers((0.018, 0.026), (0.019, None))),
    ]
    table = build_table1(observations, ("Bottleneck",), ("decoder", "gan"))
    assert table.metrics[-2:] == ("strongest_mse_train", "strongest_mse_infer")
    without, with_cem = table.variants
    train, infer = without.estimates["strongest_mse_train"], with_cem.estimates["strongest_mse_infer"]
    assert train is not None and train.mean == pytest.approx((0.010 + 0.012) / 2) and train.n == 2
    assert infer is not None and infer.n == 1 and infer.mean == pytest.approx(0.027)  # seed 1: no GAN infer
    assert without.not_converged["strongest_mse_train"] == 1  # the GAN behind seed 1 was flagged, though it lost
    assert without.not_converged["strongest_mse_infer"] == 0
    (gain,) = table.gains  # paired on the seeds both variants have: train 0, 1; infer 0 only
    train_gain, infer_gain = gain.estimates["strongest_mse_train"], gain.estimates["strongest_mse_infer"]
    assert train_gain is not None and train_gain.mean == pytest.approx((100.0 + 50.0) / 2)
    assert infer_gain is not None and infer_gain.n == 1 and infer_gain.mean == pytest.approx(100 * (0.027 / 0.018 - 1))
    assert table.strongest == {"g": {"train": {"decoder=gan": 2, "decoder": 2}, "infer": {"gan": 3}}}
    markdown = render_markdown(table, "two attacks")
    assert "| Strongest train MSE | Strongest infer MSE" in markdown
    assert "Strongest attack, on how many models: train Dec. 2, Dec. = GAN 2; infer GAN 3" in markdown
    data = json.loads(write_tables(table, tmp_path, "two attacks", {})["json"].read_text())
    assert data["strongest_wins"] == {"g": {"train": {"decoder=gan": 2, "decoder": 2}, "infer": {"gan": 3}}}
    assert data["mse_metrics"]["strongest"] == {"train": "strongest_mse_train", "infer": "strongest_mse_infer"}
    scored, _ = with_strongest(observations, ("decoder", "gan"))  # the figures draw it as a third attack
    assert plot_panels(scored, scored_attacks(("decoder", "gan")))[-2:] == [("g", "strongest", "train"),
                                                                          ("g", "strongest", "infer")]
    assert plot_pareto(scored, scored_attacks(("decoder", "gan")), tmp_path)[0].stat().st_size > 0
    one = build_table1([observation("Bottleneck", 0.0, 0, {"accuracy": 0.9, "decoder_mse_train": 0.01})],
                       ("Bottleneck",), ("decoder",))
    assert "strongest_mse_train" not in one.metrics and one.strongest == {}  # one attack: nothing to compare


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
    # an attack of the plan with nothing stored yet (a partial grid) draws no empty panel and no gallery column
    panels = plot_panels(collected.observations, plan.attacks)
    assert plot_panels(collected.observations, (*plan.attacks, "gan")) == panels
    assert len(panels) == 2  # the decoder's train and infer columns
    page = render_html(name=plan.name, table=table, figures=[("pareto", figures[0][0])],
                       galleries=[(t, p[0]) for t, p in galleries], flags=convergence_flags(collected.observations),
                       missing=[], stored=20, spec_text="<script>alert(1)</script>")
    assert page.count("data:image/png;base64,") == 4
    assert "<script>" not in page and "&lt;script&gt;" in page  # autoescaped
    assert "best epoch is its last (5 of 5)" in page


def test_report_attacks_lays_out_only_the_attacks_named(tmp_path: Path) -> None:
    """A grid whose GAN half is not run: the full report leaves the headline n/a and lists the GAN cells as
    missing; ``report --attacks decoder`` lays out the decoder alone, its headline the decoder's gain."""
    plan, store = make_store(tmp_path)
    gan = tuple(AttackCell(f"g{t.key}", t.key, "gan", t.seed, (), {}) for t in plan.train)
    store.write_plan(Plan(plan.name, plan.rows, ("decoder", "gan"), plan.train, (*plan.attack, *gan), {}))
    table_path = store.report_dir / "table1.json"

    assert experiment_cli.main(["report", str(tmp_path)]) == 0
    full = json.loads(table_path.read_text())
    (average,) = full["groups"][0]["averages"]
    assert full["attacks"] == ["decoder", "gan"] and full["attacks_left_out"] == []
    assert average["attack_mean_gain"]["train"] is None and len(full["missing"]) == 10  # the GAN cells

    assert experiment_cli.main(["report", str(tmp_path), "--attacks", "decoder"]) == 0
    sliced = json.loads(table_path.read_text())
    (average,) = sliced["groups"][0]["averages"]
    assert sliced["attacks"] == ["decoder"] and sliced["attacks_left_out"] == ["gan"] and not sliced["missing"]
    assert average["attack_mean_gain"]["train"] == pytest.approx(average["gain"]["decoder_mse_train"])
    assert sliced["planned"] == 20  # 10 trainings and their 10 decoder attacks
    markdown = (store.report_dir / "table1.md").read_text()
    assert markdown.startswith("# hand-made, decoder only (not reported: gan): Table 1")
    assert "\ngan |" not in (store.report_dir / "cost.md").read_text()  # nothing else lays the GAN out either
    for name in ("detail.md", "index.html"):
        text = (store.report_dir / name).read_text()
        assert "| GAN " not in text and "<th>GAN " not in text and "gan_" not in text, name
    assert experiment_cli.main(["report", str(tmp_path), "--attacks", "decoder,decoder"]) == 0  # named twice: once
    assert json.loads(table_path.read_text())["attacks"] == ["decoder"]
    assert sliced["name"] == "hand-made, decoder only (not reported: gan)"  # the audit console's title
    assert "GAN" not in markdown.split("## Notes")[0]

    before = table_path.read_bytes()
    assert experiment_cli.main(["report", str(tmp_path), "--attacks", "optimize"]) == 2  # named, nothing rewritten
    assert table_path.read_bytes() == before


def test_fig4_labels_sigma_only_on_rows_drawn_at_several_sigma() -> None:
    """A sweep's curve needs its σ values named; a row at one σ is named by its colour in the legend."""
    variants = [("Bottleneck", 0.0, 0.1), ("Bottleneck", 2.0, 0.1), ("Bottleneck", 2.0, 0.2),
                ("DistCorr", 0.0, 0.1), ("DistCorr", 2.0, 0.1)]
    assert sigma_labels(variants) == [("Bottleneck", 0.1), ("Bottleneck", 0.2)]
    assert sigma_labels(variants[3:]) == []


@pytest.mark.parametrize("count", [3, 9, 10, 25])
def test_fig4_gives_each_row_its_own_colour_however_many_rows(count: int) -> None:
    """The legend names a row by its colour: two rows sharing one would be read as one."""
    rows = [f"row{index}" for index in range(count)]
    colours = row_colours(rows)
    assert list(colours) == rows
    assert len({matplotlib.colors.to_hex(colour) for colour in colours.values()}) == count


def test_fig4_arrows_lead_from_each_row_without_cem_to_its_cem_variants_at_the_same_sigma() -> None:
    points = {("Bottleneck", 0.0, 0.1): (0.005, 97.8), ("Bottleneck", 2.0, 0.1): (0.006, 97.7),
              ("Bottleneck", 8.0, 0.1): (0.008, 96.0), ("Bottleneck", 2.0, 0.2): (0.009, 97.0),  # no λ = 0 at 0.2
              ("DistCorr", 0.0, 0.1): (0.006, 97.6), ("DistCorr", 2.0, 0.1): (0.007, 97.5),
              ("No_defense", 0.0, 0.0): (0.002, 98.3)}
    assert cem_steps(points) == [("Bottleneck", (0.005, 97.8), (0.006, 97.7), 2.0),
                                 ("Bottleneck", (0.005, 97.8), (0.008, 96.0), 8.0),
                                 ("DistCorr", (0.006, 97.6), (0.007, 97.5), 2.0)]
    assert cem_steps({("Bottleneck", 0.0, 0.1): (0.005, 97.8)}) == []
    # the figure's points: per variant, means over seeds keyed (row, λ, σ), here two seeds without CEM, one with
    seen = [observation("Bottleneck", 0.0, 0, {"accuracy": 0.98, "decoder_mse_train": 0.004}),
            observation("Bottleneck", 0.0, 1, {"accuracy": 0.96, "decoder_mse_train": 0.006}),
            observation("Bottleneck", 2.0, 0, {"accuracy": 0.97, "decoder_mse_train": 0.008}),
            observation("Dropout", 0.0, 0, {"accuracy": 0.95})]  # no MSE: not drawn
    means = pareto_means(seen, "g", "decoder_mse_train")
    assert list(means) == [("Bottleneck", 0.0, 0.1), ("Bottleneck", 2.0, 0.1)]
    drawn = {variant: (x.mean, y.mean) for variant, (x, y) in means.items()}
    [(row, start, end, lam)] = cem_steps(drawn)
    assert row == "Bottleneck" and lam == 2.0
    assert start == pytest.approx((0.005, 97.0)) and end == pytest.approx((0.008, 97.0))
