"""The spec's schema and the grid's cell keys (with a stand-in for the probe), and every shipped spec accepted by
the real trainer and attacker."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiment_helpers import BASE, fake_prober

from cem.errors import ConfigError
from experiment.cells import AttackCell, attack_args, cell_key, expand_plan, grid_points
from experiment.probe import Argv, ProbeResult, Resolution, run_probe
from experiment.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "experiments").glob("*.toml"))


def test_the_smoke_spec_is_two_rows_with_and_without_cem_one_seed_one_attack() -> None:
    spec = load_spec(REPO / "experiments" / "smoke.toml")
    assert spec.datasets == ("digits",) and spec.seeds == (0,)
    assert [(r.label, r.defenses, r.sigmas, r.cem_lambdas) for r in spec.rows] == [
        ("Bottleneck", (), (0.1,), (0.0, 2.0)), ("Dropout", ("dropout:0.2",), (0.1,), (0.0, 2.0))]
    assert [(a.name, a.epochs, a.network_channels, a.network_blocks) for a in spec.attacks] == [("decoder", 1, 8, 0)]


@pytest.mark.parametrize(("change", "message"), [
    (("epochs = 3", "epoch = 3"), "unknown key 'epoch' in [attacks.decoder]"),
    (("sigma = 0.1", "sigma = 0.1\nwidht = 0.5"), "unknown key 'widht' in [train]"),
    (('label = "Dropout"', 'label = "Bottleneck"'), "distinct values in the rows' labels, got Bottleneck"),
    (("cem_lambdas = [0, 2]", ""), "expected cem_lambdas in [train] or in rows 'Bottleneck'"),
    (("sigma = 0.1", "sigma = -0.1"), "expected rows 'Bottleneck'.sigma to be a number >= 0, got -0.1"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "distinct values in experiment.seeds"),
    (("sigma = 0.1", 'sigma = 0.1\nextra_args = ["--epochs=3"]'), "without --epochs (the spec or the runner"),
    # argparse takes an unambiguous prefix for the flag: --se 7 would give every seed's cell seed 7
    (("sigma = 0.1", 'sigma = 0.1\nextra_args = ["--se", "7"]'), "without --seed (as its abbreviation)"),
    (("sigma = 0.1", 'sigma = 0.1\nextra_args = ["--cem-la=4"]'), "without --cem-lambda (as its abbreviation)"),
    (("sigma = 0.1", 'sigma = 0.1\nextra_args = ["--noise", "0"]'), "without --noise-std (as its abbreviation)"),
    # an attack's extra_args (--nproc N) may not set what the spec or the runner sets either
    (("epochs = 3", 'epochs = 3\nextra_args = ["--se", "7"]'),
     "expected attacks.decoder.extra_args without --seed (as its abbreviation)"),
    (("epochs = 3", 'epochs = 3\nextra_args = ["--out=x"]'), "attacks.decoder.extra_args without --out (the spec"),
    (("epochs = 3", 'epochs = 3\nextra_args = "--nproc 2"'), "expected attacks.decoder.extra_args to be a list"),
    (("epochs = 3", "epochs = 3\nmin_steps = -1"), "expected attacks.decoder.min_steps to be an integer >= 0, got -1"),
    (("epochs = 3", 'epochs = 3\nextra_args = ["--min", "9"]'),
     "expected attacks.decoder.extra_args without --min-steps (as its abbreviation)"),
    (('name = "unit"', 'name = "unit"\ndata_dir = "/nonexistent/cifar"'), "'/nonexistent/cifar', which is not a"),
    (("[attacks.decoder]\nepochs = 3", ""), "at least one [attacks.<name>] table"),
    (("[[rows]]", "[[rowz]]"), "unknown key 'rowz' in [top level]"),
])
def test_a_spec_error_names_the_bad_key_or_value(change: tuple[str, str], message: str) -> None:
    assert BASE.count(change[0]) >= 1
    with pytest.raises(ConfigError) as error:
        parse_spec(BASE.replace(change[0], change[1], 1))
    assert message in str(error.value)


def test_cells_are_seed_major_and_each_attack_follows_its_bundle() -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    assert [(c.seed, c.row, c.cem_lambda) for c in plan.train] == [
        (s, row, lam) for s in (0, 1) for row in ("Bottleneck", "Dropout") for lam in (0.0, 2.0)]
    order = plan.runnable()
    assert len(order) == 16
    for index, cell in enumerate(order):
        if isinstance(cell, AttackCell):
            assert order[index - 1].key == cell.train_key
    assert len({c.key for c in order}) == 16
    assert expand_plan(parse_spec(BASE), fake_prober) == plan  # keys do not depend on anything but the settings


def test_changing_one_sigma_changes_only_the_keys_of_its_cells() -> None:
    before = expand_plan(parse_spec(BASE), fake_prober)
    changed = BASE.replace('defenses = ["dropout:0.2"]', 'defenses = ["dropout:0.2"]\nsigma = 0.2')
    after = expand_plan(parse_spec(changed), fake_prober)
    for old, new in zip(before.train, after.train, strict=True):
        assert (old.key == new.key) == (old.row == "Bottleneck")
    old_attacks = {(c.train_key, c.attack): c.key for c in before.attack}
    kept = [c for c in after.attack if (c.train_key, c.attack) in old_attacks]
    assert len(kept) == 4 and all(old_attacks[(c.train_key, c.attack)] == c.key for c in kept)
    assert {c.key for c in after.attack} & set(old_attacks.values()) == {c.key for c in kept}


def test_an_attack_key_follows_its_bundle_and_its_own_settings() -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    longer = expand_plan(parse_spec(BASE.replace("epochs = 3", "epochs = 4")), fake_prober)
    assert [c.key for c in plan.train] == [c.key for c in longer.train]
    assert not {c.key for c in plan.attack} & {c.key for c in longer.attack}
    assert attack_args(parse_spec(BASE).attacks[0], 1) == ("--attack", "decoder", "--seed", "1", "--epochs", "3")


def test_an_attacks_min_steps_enter_its_key_unless_they_ask_for_no_minimum() -> None:
    plan = expand_plan(parse_spec(BASE), fake_prober)
    raised_spec = parse_spec(BASE.replace("epochs = 3", "epochs = 3\nmin_steps = 5600"))
    assert raised_spec.attacks[0].min_steps == 5600
    assert attack_args(raised_spec.attacks[0], 1)[-2:] == ("--min-steps", "5600")
    raised = expand_plan(raised_spec, fake_prober)
    assert [c.key for c in plan.train] == [c.key for c in raised.train]
    assert not {c.key for c in plan.attack} & {c.key for c in raised.attack}
    none = expand_plan(parse_spec(BASE.replace("epochs = 3", "epochs = 3\nmin_steps = 0")), fake_prober)
    assert [c.key for c in none.attack] == [c.key for c in plan.attack]  # 0 trains what omitting it trained


def test_rows_with_the_same_settings_share_their_cells() -> None:
    twin = BASE + '\n[[rows]]\nlabel = "Bottleneck again"\n'
    plan = expand_plan(parse_spec(twin), fake_prober)
    assert {c.key for c in plan.train if c.row == "Bottleneck"} == \
        {c.key for c in plan.train if c.row == "Bottleneck again"}
    assert len(plan.train) == 12 and len({c.key for c in plan.train}) == 8  # 12 grid points, 8 distinct trainings
    assert len(plan.runnable()) == 16  # each run once, with its attack


def test_a_slice_of_the_grid_keeps_the_full_grids_keys_and_refuses_names_it_lacks() -> None:
    plan = expand_plan(parse_spec(BASE + "\n[attacks.gan]\nepochs = 2\n"), fake_prober)
    part = plan.selected(rows=("Dropout",), attacks=("gan",), seeds=(1,))
    assert [(c.row, c.seed, c.cem_lambda) for c in part.train] == [("Dropout", 1, 0.0), ("Dropout", 1, 2.0)]
    assert {c.attack for c in part.attack} == {"gan"} and len(part.attack) == 2
    assert {c.key for c in part.runnable()} < {c.key for c in plan.runnable()}
    assert {c.train_key for c in part.attack} == {c.key for c in part.train}
    assert plan.selected() == plan
    with pytest.raises(ConfigError) as error:
        plan.selected(rows=("Dropuot",), attacks=("optimize",), seeds=(7,))
    refusal = "the plan has no row 'Dropuot', attack 'optimize', seed 7; it has rows Bottleneck, Dropout, attacks"
    assert refusal in str(error.value)


def test_names_the_probe_does_not_know_are_all_reported_before_anything_runs() -> None:
    bad = (BASE.replace('"digits"', '"digitz"').replace("dropout:0.2", "dropoot:0.2")
           .replace("[attacks.decoder]", "[attacks.decodr]").replace("[[rows]]\nlabel = \"Bottleneck\"",
                                                                      "[[rows]]\nlabel = \"Bottleneck\"\ndefenses = "
                                                                      "[\"noise:0.3\"]"))
    with pytest.raises(ConfigError) as error:
        expand_plan(parse_spec(bad), fake_prober)
    text = str(error.value)
    for part in ("unknown data set 'digitz'", "unknown defense 'dropoot' in row 'Dropout'",
                 "unknown attack 'decodr' in [attacks.decodr]",
                 "defense 'noise' in row 'Bottleneck' is set by the row's 'sigma' key"):
        assert part in text


def test_the_data_folder_is_part_of_the_key_of_a_data_set_given_one(tmp_path: Path) -> None:
    plain = expand_plan(parse_spec(BASE), fake_prober)
    # without a data folder the key is the resolved configuration's alone, as before: digits keys do not move
    assert [c.key for c in plain.train] == [cell_key("train", {"config": c.config}) for c in plain.train]
    keys = {}
    for name in ("faces-a", "faces-b"):
        (tmp_path / name).mkdir()
        spec = parse_spec(BASE.replace('name = "unit"', f'name = "unit"\ndata_dir = "{tmp_path / name}"'))
        keys[name] = [c.key for c in expand_plan(spec, fake_prober).train]
    assert not set(keys["faces-a"]) & set(keys["faces-b"])  # another folder is other data: other cells
    assert not set(keys["faces-a"]) & {c.key for c in plain.train}


def test_settings_that_extra_args_override_in_the_real_parse_are_refused() -> None:
    """However extra_args spell it (a flag spelling the spec check does not know), a parse that resolves another
    seed than the spec set would put every seed under one key: refused, per the probe's own parse."""

    def overriding(train: list[Argv], attack: list[Argv]) -> ProbeResult:
        probe = fake_prober(train, attack)
        resolved = {argv: Resolution({**(r.resolved or {}), "seed": 7}, None) for argv, r in probe.train.items()}
        return ProbeResult(probe.datasets, probe.archs, probe.defenses, probe.field_defenses, probe.attacks,
                           resolved, probe.attack)

    with pytest.raises(ConfigError, match=r"train.extra_args override what the spec sets for row 'Bottleneck' on "
                                          r"digits \(seed 0\): seed=7 where the spec sets 0"):
        expand_plan(parse_spec(BASE), overriding)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_real_probe_keys_the_gan_config_and_nproc_and_sees_abbreviated_overrides() -> None:
    gan = ("--attack", "gan", "--seed", "0")
    base = ("--dataset", "digits", "--seed", "0", "--noise-std", "0.1", "--cem-lambda", "0")
    probe = run_probe([base, (*base, "--nproc", "2"), (*base, "--nproc", "3"), (*base, "--se", "7")],
                      [gan, (*gan, "--epochs", "30"), (*gan, "--nproc", "2"), (*gan, "--nproc", "0")])
    default = probe.attack[gan].resolved
    assert default is not None and default["gan"]["epochs"] == 150  # the attack's own default, not None
    assert {"generator_lr", "critic_lr", "n_critic", "mse_weight"} <= set(default["gan"])
    assert default["gan_pretrain_epochs"] == 50
    shorter = probe.attack[(*gan, "--epochs", "30")].resolved
    assert shorter is not None and (shorter["gan"]["epochs"], shorter["gan_pretrain_epochs"]) == (30, 10)
    one, two = probe.train[base].resolved, probe.train[(*base, "--nproc", "2")].resolved
    assert one is not None and two is not None and "nproc" not in one and two["nproc"] == 2
    assert cell_key("train", {"config": one}) != cell_key("train", {"config": two})
    assert probe.train[(*base, "--nproc", "3")].error  # cem-train's own check: batch 128 over 3 processes
    abbreviated = probe.train[(*base, "--se", "7")].resolved
    assert abbreviated is not None and abbreviated["seed"] == 7  # what the spec check and the plan refuse
    parallel = probe.attack[(*gan, "--nproc", "2")].resolved  # a data-parallel attack: keyed apart
    assert parallel is not None and "nproc" not in default and parallel == {**default, "nproc": 2}
    assert probe.attack[(*gan, "--nproc", "0")].error == "expected --nproc >= 1, got 0"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_real_probe_keys_min_steps_only_when_they_ask_for_a_minimum() -> None:
    decoder = ("--attack", "decoder", "--seed", "0")
    probe = run_probe([], [decoder, (*decoder, "--min-steps", "0"), (*decoder, "--min-steps", "5600"),
                           ("--attack", "optimize", "--seed", "0", "--min-steps", "5")])
    plain = probe.attack[decoder].resolved
    assert plain is not None and "min_steps" not in plain["network"]  # the keys of cells before the setting
    assert probe.attack[(*decoder, "--min-steps", "0")].resolved == plain
    raised = probe.attack[(*decoder, "--min-steps", "5600")].resolved
    assert raised is not None and raised["network"] == {**plain["network"], "min_steps": 5600}
    refused = probe.attack[("--attack", "optimize", "--seed", "0", "--min-steps", "5")].error
    assert refused is not None and "expected no min_steps for the optimize attack" in refused


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_shipped_spec_is_accepted_by_the_real_trainer_and_attacker() -> None:
    specs = [load_spec(path) for path in SPECS]
    assert {path.name for path in SPECS} >= {"smoke.toml", "digits-table1.toml", "mnist5k-table1.toml",
                                             "cifar10-table1.toml", "tinyimagenet-table1.toml",
                                             "facescrub-table1.toml"}
    trains = [point.args for spec in specs for point in grid_points(spec)]
    attacks = [attack_args(a, seed) for spec in specs for a in spec.attacks for seed in spec.seeds]
    probe = run_probe(trains, attacks)  # one child for every spec: the real parsers, configs and registries
    for spec in specs:
        plan = expand_plan(spec, lambda train, attack: probe)
        assert plan.train and plan.attack
    by_name = {spec.name: expand_plan(spec, lambda train, attack: probe) for spec in specs}
    table1 = by_name["digits-table1"]
    assert table1.rows == ("No_defense", "Bottleneck", "DistCorr", "Dropout", "PATROL", "ResSFL", "Noise_Nopeek",
                           "Noise_ARL")
    assert len({c.key for c in table1.train}) == 45 and len(table1.attack) == 90  # 15 variants x 3 seeds x 2 attacks
    noise_rows = {(c.row, c.sigma) for c in table1.train if c.row.startswith("Noise_")}
    assert noise_rows == {("Noise_Nopeek", 0.2), ("Noise_ARL", 0.2)}
    sweep, mnist = by_name["mnist5k-sigma-sweep"], by_name["mnist5k-table1"]
    assert {(c.sigma, c.cem_lambda) for c in sweep.train} == {(s, lam) for s in (0.05, 0.1, 0.2) for lam in (0.0, 2.0)}
    shared = {c.key for c in sweep.runnable()} & {c.key for c in mnist.runnable()}
    assert len(shared) == 12  # the σ = 0.1 Bottleneck trainings and decoder attacks, 3 seeds: --reuse-from copies them
    cifar = by_name["cifar10-table1"]
    assert {(c.sigma, c.cem_lambda) for c in cifar.train if c.row == "Bottleneck"} == {(0.025, 0.0), (0.025, 16.0)}
    assert {c.config["epochs"] for c in cifar.train} == {240}
    assert {(c.arch, c.cut_layer) for c in by_name["tinyimagenet-table1"].train} == {("resnet20", 5)}
