"""The tables beside Table 1 (``experiment.detail``): PSNR, SSIM and attack accuracy per attack and column, and each
model's two ξ against what its attacks achieved, from stored cells built by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from experiment.cells import AttackCell, Plan, TrainCell
from experiment.detail import build_detail, detail_json, render_detail_markdown
from experiment.report import collect
from experiment.store import CellStore

T_975_1 = 12.706204736174698  # Student t quantile, 1 degree of freedom (two seeds)
# (λ, seed) -> (PSNR train, PSNR infer, attack accuracy train, ξ estimate, whether the attack went below it)
MODELS = {(0.0, 0): (31.0, 30.0, 0.98, 4e-6, False), (0.0, 1): (33.0, float("nan"), 0.96, 6e-6, False),
          (2.0, 0): (28.0, 27.0, 0.97, 3e-4, True), (2.0, 1): (27.0, 26.0, 0.95, 5e-4, False)}


def make_store(root: Path) -> tuple[Plan, CellStore]:
    store = CellStore(root)
    store.create()
    trains, attacks = [], []
    for (lam, seed), (psnr_train, psnr_infer, accuracy, xi, below) in MODELS.items():
        train = TrainCell(f"b{int(lam)}s{seed}", "digits", "vgg11_bn_sgm", 4, "Bottleneck", 0.1, lam, seed, (), {})
        attack = AttackCell(f"a{train.key}", train.key, "decoder", seed, (), {})
        trains.append(train)
        attacks.append(attack)
        store.output_dir("train", train.key).mkdir(parents=True)
        (store.output_dir("train", train.key) / "manifest.json").write_text("{}")
        store.save({"kind": "train", "key": train.key, "accuracy": 0.98, "model_id": f"model-{train.key}",
                    "metrics": {"mse_bound_xi_estimate": xi, "mse_bound_xi": 0.04}})
        outputs = store.output_dir("attack", attack.key)
        outputs.mkdir(parents=True)
        (outputs / "metrics.json").write_text("{}")
        column = {"mse": 0.001, "ssim": 0.9, "attack_accuracy": accuracy}
        store.save({"kind": "attack", "key": attack.key, "train_key": train.key, "model_id": f"model-{train.key}",
                    "metrics": {"train": {**column, "psnr": psnr_train}, "infer": {**column, "psnr": psnr_infer}},
                    "bound": {"kind": "estimate", "exceeds_attack": below, "attack_mse": 0.0009,
                              "relative": {"kind": "relative", "exceeds_attack": True, "attack_mse": 0.001}},
                    "columns": {"train": {"not_converged": "still improving" if (lam, seed) == (2.0, 1) else None},
                                "infer": {"not_converged": None}}})
    plan = Plan("hand-made", ("Bottleneck",), ("decoder",), tuple(trains), tuple(attacks), {})
    store.write_plan(plan)
    return plan, store


def test_each_value_is_the_mean_over_seeds_with_its_interval_and_the_flags_of_its_column(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path)
    table = build_detail(collect(plan, store).observations, plan.rows, plan.attacks)
    without, with_cem = table.lines
    psnr = without.estimates["decoder_psnr_train"]
    assert psnr is not None and (psnr.mean, psnr.n) == (32.0, 2)
    assert psnr.half_width == pytest.approx(T_975_1 * math.sqrt(2.0) / math.sqrt(2))  # values 31, 33: sd √2
    infer = without.estimates["decoder_psnr_infer"]  # a NaN PSNR is left out: one model left
    assert infer is not None and (infer.mean, infer.n) == (30.0, 1)
    accuracy = with_cem.estimates["decoder_attack_accuracy_train"]
    assert accuracy is not None and accuracy.mean == pytest.approx(0.96)
    assert with_cem.not_converged["decoder_ssim_train"] == 1 and with_cem.not_converged["decoder_ssim_infer"] == 0
    markdown = render_detail_markdown(table, "hand-made")
    assert "| 32.00 ± 12.71 |" in markdown and "| 30.00 (n=1) |" in markdown
    assert "| 96.0 ± 12.7 † |" in markdown  # in %, marked: the train column of one model did not converge


def test_the_xi_table_counts_the_models_an_attack_reconstructed_below(tmp_path: Path) -> None:
    plan, store = make_store(tmp_path)
    table = build_detail(collect(plan, store).observations, plan.rows, plan.attacks)
    without, with_cem = table.xi
    assert (without.below, without.judged) == ({"estimate": 0, "relative": 2}, {"estimate": 2, "relative": 2})
    assert with_cem.below == {"estimate": 1, "relative": 2}
    estimate = with_cem.line.estimates["estimate"]
    assert estimate is not None and estimate.mean == pytest.approx(4e-4)
    data = detail_json(table)
    (group,) = data["groups"]
    assert group["xi"][1]["attacks_below"] == {"estimate": 1, "relative": 2}
    assert [part["title"] for part in data["rendered"][0]["tables"]] == ["Dec. attack", "ξ"]
    assert data["rendered"][0]["tables"][1]["rows"][1][5] == "1/2 †"  # one of the two models' attack was flagged
    assert data["rendered"][0]["tables"][1]["rows"][0][5] == "0/2"


def test_a_diverged_attack_gives_no_verdict_and_a_flag_marks_only_values_its_model_is_behind(tmp_path: Path) -> None:
    """cem-attack stores ``exceeds_attack`` False when the attack's MSE is NaN: that is no verdict, not "not
    below". And a † marks a value only where the flagged model has that value."""
    plan, store = make_store(tmp_path)
    record = store.load("attack", "ab2s1")
    assert record is not None
    record["bound"]["attack_mse"] = None
    record["bound"]["exceeds_attack"] = False
    del record["metrics"]["train"]["ssim"]  # its train column is the flagged one
    store.save(record)
    table = build_detail(collect(plan, store).observations, plan.rows, plan.attacks)
    _, with_cem = table.xi
    assert with_cem.judged == {"estimate": 1, "relative": 2} and with_cem.below == {"estimate": 1, "relative": 2}
    line = table.lines[1]
    assert line.not_converged["decoder_ssim_train"] == 0 and line.not_converged["decoder_psnr_train"] == 1


def make_duel_store(root: Path) -> tuple[Plan, CellStore]:
    """Three attacks on the Bottleneck models of two table groups (cut 4: seeds 1 and 2; cut 3: seed 1); the GAN
    cell of cut 4 seed 2 is not stored, and on cut 3 the decoder's train MSE is 0."""
    store = CellStore(root)
    store.create()
    # (cut, seed) -> attack -> (MSE train, MSE infer, best epoch train, best epoch infer, flagged columns)
    scores = {(4, 1): {"decoder": (0.004, 0.010, 49, 50, {"train"}), "gan": (0.004, 0.008, 0, 146, {"infer"}),
                       "optimize": (0.02, 0.05, 300, 300, set())},
              (4, 2): {"decoder": (0.005, 0.012, 48, 47, set()), "optimize": (0.01, 0.024, 300, 300, set())},
              (3, 1): {"decoder": (0.0, 0.002, 10, 12, set()), "gan": (0.001, 0.001, 3, 4, set()),
                       "optimize": (0.002, 0.004, 300, 300, set())}}
    trains, attacks = [], []
    for (cut, seed), by_attack in scores.items():
        train = TrainCell(f"c{cut}s{seed}", "digits", "vgg11_bn_sgm", cut, "Bottleneck", 0.1, 0.0, seed, (), {})
        trains.append(train)
        store.output_dir("train", train.key).mkdir(parents=True)
        (store.output_dir("train", train.key) / "manifest.json").write_text("{}")
        store.save({"kind": "train", "key": train.key, "accuracy": 0.98, "model_id": f"model-{train.key}",
                    "metrics": {}})
        for attack in ("decoder", "gan", "optimize"):
            cell = AttackCell(f"{attack}-{train.key}", train.key, attack, seed, (), {})
            attacks.append(cell)
            if attack not in by_attack:
                continue
            mse_train, mse_infer, best_train, best_infer, flagged = by_attack[attack]
            outputs = store.output_dir("attack", cell.key)
            outputs.mkdir(parents=True)
            (outputs / "metrics.json").write_text("{}")
            columns = {column: {"best_epoch": best, "not_converged": "best epoch is its last" if column in flagged
                                else None, **({"optimize": {"steps": 300}} if attack == "optimize" else {})}
                       for column, best in (("train", best_train), ("infer", best_infer))}
            store.save({"kind": "attack", "key": cell.key, "train_key": train.key,
                        "model_id": f"model-{train.key}", "columns": columns,
                        "metrics": {"train": {"mse": mse_train}, "infer": {"mse": mse_infer}}})
    plan = Plan("duel", ("Bottleneck",), ("decoder", "gan", "optimize"), tuple(trains), tuple(attacks), {})
    store.write_plan(plan)
    return plan, store


def test_head_to_head_pairs_each_later_attack_with_the_first_on_the_same_model(tmp_path: Path) -> None:
    """Each later attack against the decoder, per table group: the MSE change only on the seeds both attacks
    scored (none from a zero decoder MSE, counted), a † when either attack behind it was flagged, and per seed the
    best epoch each learned attack returned ('–' where none: a missing cell, an optimisation attack)."""
    plan, store = make_duel_store(tmp_path)
    table = build_detail(collect(plan, store).observations, plan.rows, plan.attacks)
    cut4, cut3 = table.duels
    assert (cut4.line.group, cut3.line.group) == ("digits · vgg11_bn_sgm cut 4", "digits · vgg11_bn_sgm cut 3")
    infer = cut4.line.estimates["gan_mse_infer"]
    assert infer is not None and infer.n == 1 and infer.mean == pytest.approx(-20.0)  # seed 1: 0.008 vs 0.010
    train = cut4.line.estimates["gan_mse_train"]
    assert train is not None and train.mean == pytest.approx(0.0)  # best epoch 0: the decoder it started from
    optimize = cut4.line.estimates["optimize_mse_train"]  # seeds 1 and 2: +400 % and +100 %
    assert optimize is not None and (optimize.n, optimize.mean) == (2, pytest.approx(250.0))
    # the decoder's train flag and the GAN's infer flag each count once, on the pairs they are behind
    assert cut4.line.not_converged == {"gan_mse_train": 1, "gan_mse_infer": 1, "optimize_mse_train": 1,
                                       "optimize_mse_infer": 0}
    assert cut4.best_epochs["gan_best_epoch_infer"] == ((146, True), (None, False))
    assert cut4.best_epochs["decoder_best_epoch_train"] == ((49, True), (48, False))
    assert cut4.best_epochs["optimize_best_epoch_train"] == ((None, False), (None, False))  # steps, not epochs
    assert cut3.line.estimates["gan_mse_train"] is None and cut3.zero_baseline["gan_mse_train"] == 1
    assert cut3.line.estimates["gan_mse_infer"] is not None and cut3.zero_baseline["gan_mse_infer"] == 0

    data = detail_json(table)
    cut4_tables, cut3_tables = (group["tables"] for group in data["rendered"])
    assert [part["title"] for part in cut4_tables] == ["Dec. attack", "GAN attack", "Opt. attack", "ξ",
                                                       "Head to head"]
    head = cut4_tables[4]
    assert head["header"][4:] == [
        "Dec. best epoch train", "GAN best epoch train", "Opt. best epoch train", "GAN vs Dec. train",
        "Opt. vs Dec. train", "Dec. best epoch infer", "GAN best epoch infer", "Opt. best epoch infer",
        "GAN vs Dec. infer", "Opt. vs Dec. infer"]
    assert head["rows"] == [["Bottleneck", "0.1", "0", "2", "49 †, 48", "0, –", "–, –", "+0.0 % (n=1) †",
                             "+250.0 ± 1905.9 % †", "50, 47", "146 †, –", "–, –", "-20.0 % (n=1) †",
                             "+250.0 ± 1905.9 %"]]
    assert cut3_tables[4]["rows"] == [["Bottleneck", "0.1", "0", "1", "10", "3", "–", "n/a", "n/a",
                                       "12", "4", "–", "-50.0 %", "+100.0 %"]]
    cut4_json, cut3_json = (group["head_to_head"] for group in data["groups"])
    assert [entry["seeds"] for entry in (*cut4_json, *cut3_json)] == [[1, 2], [1]]
    assert cut4_json[0]["mse_change_percent"]["gan_mse_infer"]["mean"] == pytest.approx(-20.0)
    assert cut4_json[0]["best_epochs"]["gan_best_epoch_train"] == [{"epoch": 0, "not_converged": False},
                                                                   {"epoch": None, "not_converged": False}]
    assert cut3_json[0]["zero_baseline"]["gan_mse_train"] == 1
    assert "### Head to head" in render_detail_markdown(table, "duel")
