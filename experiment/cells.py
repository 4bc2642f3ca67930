"""The grid: a spec expanded into train and attack cells, each named by a hash of its resolved configuration.

A *train* cell is one ``cem-train`` run (one data set, cut, row, σ, λ and seed);
an *attack* cell is one ``cem-attack`` run of one attack on one train cell's
bundle. The key of a train cell is the first 12 hex digits of the sha256 of its
resolved training configuration (``experiment.probe``: what the trainer would
run, profile defaults filled in, defenses as the records the manifest gets);
a data set given a data folder adds that folder (``train_key``). The key of an
attack cell hashes the attack's resolved settings and its train cell's key; a
bundle retrained under the same key (its record lost, its folder deleted) is
re-attacked because each attack record names the model it attacked and a
record of another model does not count as stored (``experiment.store``). Where a
cell runs (device, threads, output folder) is not part of its key. Labels are
not either: two rows with the same settings share their cells.

The expansion is seed-major (every row of seed 0, then of seed 1), so an
interrupted grid holds whole seeds rather than whole rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from cem.errors import ConfigError
from experiment.probe import Argv, ProbeResult
from experiment.spec import NO_BOTTLENECK, AttackSpec, ExperimentSpec, RowSpec, check_names

KEY_FORMAT = 1  # bump to rerun every cell after a change of what a cell stores
KEY_CHARS = 12
MAX_LISTED_PROBLEMS = 8

Prober = Callable[[Sequence[Argv], Sequence[Argv]], ProbeResult]


def cell_key(kind: str, payload: Mapping[str, Any]) -> str:
    """The first ``KEY_CHARS`` hex digits of the sha256 of the canonical JSON of ``payload``."""
    text = json.dumps({"kind": kind, "format": KEY_FORMAT, **payload}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class TrainCell:
    """One grid point: the model trained for (data set, cut, row, σ, λ, seed), and its cem-train arguments."""

    key: str
    dataset: str
    arch: str
    cut_layer: int
    row: str
    sigma: float
    cem_lambda: float
    seed: int
    args: tuple[str, ...]
    config: Mapping[str, Any]

    kind: ClassVar[str] = "train"

    @property
    def group(self) -> str:
        """The table a cell belongs to: one Table 1 per data set, arch and cut."""
        return f"{self.dataset} · {self.arch} cut {self.cut_layer}"

    @property
    def with_cem(self) -> bool:
        return self.cem_lambda > 0

    def describe(self) -> str:
        return (f"{self.group} | {self.row} σ={_number(self.sigma)} λ={_number(self.cem_lambda)} "
                f"seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "dataset": self.dataset, "arch": self.arch, "cut_layer": self.cut_layer,
                "row": self.row, "sigma": self.sigma, "cem_lambda": self.cem_lambda, "seed": self.seed,
                "args": list(self.args), "config": dict(self.config)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainCell:
        return cls(key=str(data["key"]), dataset=str(data["dataset"]), arch=str(data["arch"]),
                   cut_layer=int(data["cut_layer"]), row=str(data["row"]), sigma=float(data["sigma"]),
                   cem_lambda=float(data["cem_lambda"]), seed=int(data["seed"]), args=tuple(data["args"]),
                   config=dict(data["config"]))


@dataclass(frozen=True)
class AttackCell:
    """One attack on one train cell's bundle, and its cem-attack arguments (the bundle and output come later)."""

    key: str
    train_key: str
    attack: str
    seed: int
    args: tuple[str, ...]
    config: Mapping[str, Any]

    kind: ClassVar[str] = "attack"

    def describe(self) -> str:
        return f"{self.attack} on train {self.train_key}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "train_key": self.train_key, "attack": self.attack, "seed": self.seed,
                "args": list(self.args), "config": dict(self.config)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackCell:
        return cls(key=str(data["key"]), train_key=str(data["train_key"]), attack=str(data["attack"]),
                   seed=int(data["seed"]), args=tuple(data["args"]), config=dict(data["config"]))


Cell = TrainCell | AttackCell


@dataclass(frozen=True)
class Plan:
    """The expanded grid: every grid point (``train``, in run order; points may share a key) and every
    distinct attack cell, with what the report needs to lay them out (row and attack order, the spec)."""

    name: str
    rows: tuple[str, ...]
    attacks: tuple[str, ...]
    train: tuple[TrainCell, ...]
    attack: tuple[AttackCell, ...]
    data_dirs: Mapping[str, str]
    spec_text: str = ""
    spec_path: str = ""

    def runnable(self) -> list[Cell]:
        """Every distinct cell once, each train cell followed by its attacks: the order cells are started in."""
        attacks: dict[str, list[AttackCell]] = {}
        for cell in self.attack:
            attacks.setdefault(cell.train_key, []).append(cell)
        order: list[Cell] = []
        seen: set[str] = set()
        for train in self.train:
            if train.key not in seen:
                seen.add(train.key)
                order += [train, *attacks.get(train.key, [])]
        return order

    def data_dir_for(self, dataset: str) -> str | None:
        return self.data_dirs.get(dataset, self.data_dirs.get("*"))

    def selected(self, *, rows: Sequence[str] = (), attacks: Sequence[str] = (),
                 seeds: Sequence[int] = ()) -> Plan:
        """The part of the grid a ``run --rows/--attacks/--seeds`` does now (an empty filter keeps everything).
        Keys do not change, so the cells it stores are the full grid's: a long grid can be run a slice at a
        time, and a slice that names no cell of the plan is refused by name rather than running nothing."""
        self._refuse_unknown(rows, attacks, seeds)
        train = tuple(t for t in self.train if (not rows or t.row in rows) and (not seeds or t.seed in seeds))
        kept = {t.key for t in train}
        attack = tuple(a for a in self.attack if a.train_key in kept and (not attacks or a.attack in attacks))
        return replace(self, train=train, attack=attack)

    def with_attacks(self, attacks: Sequence[str]) -> Plan:
        """The grid as if its spec named only ``attacks`` (in the spec's order): what ``report --attacks`` lays
        out, for a grid whose other attacks will not be run here. Unlike ``selected``, the other attacks leave the
        layout too (no empty columns, and the paper's headline is the mean over the attacks reported)."""
        self._refuse_unknown((), attacks, ())
        kept = tuple(a for a in self.attacks if a in attacks)
        return replace(self, attacks=kept, attack=tuple(a for a in self.attack if a.attack in kept))

    def _refuse_unknown(self, rows: Sequence[str], attacks: Sequence[str], seeds: Sequence[int]) -> None:
        unknown = ([f"row {r!r}" for r in rows if r not in self.rows]
                   + [f"attack {a!r}" for a in attacks if a not in self.attacks]
                   + [f"seed {s}" for s in seeds if s not in {t.seed for t in self.train}])
        if unknown:
            raise ConfigError(f"the plan has no {', '.join(unknown)}; it has rows {', '.join(self.rows)}, attacks "
                              f"{', '.join(self.attacks) or 'none'} and seeds "
                              f"{', '.join(str(s) for s in sorted({t.seed for t in self.train}))}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": KEY_FORMAT, "name": self.name, "rows": list(self.rows), "attacks": list(self.attacks),
                "train": [c.to_dict() for c in self.train], "attack": [c.to_dict() for c in self.attack],
                "data_dirs": dict(self.data_dirs), "spec_text": self.spec_text, "spec_path": self.spec_path}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(name=str(data["name"]), rows=tuple(data["rows"]), attacks=tuple(data["attacks"]),
                   train=tuple(TrainCell.from_dict(c) for c in data["train"]),
                   attack=tuple(AttackCell.from_dict(c) for c in data["attack"]),
                   data_dirs=dict(data.get("data_dirs") or {}), spec_text=str(data.get("spec_text", "")),
                   spec_path=str(data.get("spec_path", "")))


@dataclass(frozen=True)
class _Point:
    """A grid point before the probe has resolved it."""

    dataset: str
    cut_layer: int | None
    row: RowSpec
    sigma: float | None
    cem_lambda: float
    seed: int
    args: Argv


def train_args(spec: ExperimentSpec, dataset: str, cut_layer: int | None, row: RowSpec, sigma: float | None,
               cem_lambda: float, seed: int) -> Argv:
    """The cem-train arguments that define one grid point's model (no output, device, threads or data folder)."""
    args = ["--dataset", dataset, "--seed", str(seed)]
    if spec.arch is not None:
        args += ["--arch", spec.arch]
    if cut_layer is not None:
        args += ["--cut-layer", str(cut_layer)]
    if spec.width is not None:
        args += ["--width", repr(spec.width)]
    if spec.epochs is not None:
        args += ["--epochs", str(spec.epochs)]
    if row.bottleneck is not None:
        args += ["--bottleneck", NO_BOTTLENECK if row.bottleneck == NO_BOTTLENECK else str(row.bottleneck)]
    if sigma is not None:
        args += ["--noise-std", repr(sigma)]
    args += ["--cem-lambda", repr(cem_lambda)]
    for defense in row.defenses:
        args += ["--defense", defense]
    return (*args, *spec.extra_args)


def attack_args(attack: AttackSpec, seed: int) -> Argv:
    """The cem-attack arguments of one attack (the attack's seed is its bundle's training seed), its
    ``extra_args`` last."""
    args = ["--attack", attack.name, "--seed", str(seed)]
    for flag, value in (("--epochs", attack.epochs), ("--steps", attack.steps),
                        ("--network-channels", attack.network_channels),
                        ("--network-blocks", attack.network_blocks), ("--min-steps", attack.min_steps)):
        if value is not None:
            args += [flag, str(value)]
    return (*args, *attack.extra_args)


def grid_points(spec: ExperimentSpec) -> list[_Point]:
    """Seed-major: seed, data set, cut, row, σ, λ."""
    return [_Point(dataset, cut, row, sigma, lam, seed, train_args(spec, dataset, cut, row, sigma, lam, seed))
            for seed in spec.seeds for dataset in spec.datasets for cut in spec.cut_layers for row in spec.rows
            for sigma in row.sigmas for lam in row.cem_lambdas]


def _name_problems(spec: ExperimentSpec, probe: ProbeResult) -> list[str]:
    problems = check_names(spec, probe.datasets, probe.archs)
    for row in spec.rows:
        for defense in row.defenses:
            name = defense.split(":", 1)[0].strip()
            if name in probe.field_defenses:
                key = "sigma" if name == "noise" else "bottleneck"
                problems.append(f"defense {name!r} in row {row.label!r} is set by the row's {key!r} key, not in "
                                f"its defenses")
            elif name not in probe.defenses:
                problems.append(f"unknown defense {name!r} in row {row.label!r} ({defense!r}); expected one of "
                                f"{[d for d in probe.defenses if d not in probe.field_defenses]}")
    problems += [f"unknown attack {attack.name!r} in [attacks.{attack.name}]; expected one of {list(probe.attacks)}"
                 for attack in spec.attacks if attack.name not in probe.attacks]
    return problems


def _raise_problems(problems: list[str], spec: ExperimentSpec) -> None:
    unique = list(dict.fromkeys(problems))
    if unique:
        shown = unique[:MAX_LISTED_PROBLEMS]
        more = f"; and {len(unique) - len(shown)} more" if len(unique) > len(shown) else ""
        where = f" {spec.path}" if spec.path else ""
        raise ConfigError(f"invalid experiment spec{where}: " + "; ".join(shown) + more)


def overridden_settings(point: _Point, spec: ExperimentSpec, resolved: Mapping[str, Any]) -> list[str]:
    """The settings the spec gave a grid point that its resolved configuration does not hold: ``extra_args``
    overrode them (the parse is cem-train's own, so a spelling ``experiment.spec`` does not know still shows
    here). Such a cell would run with another seed, σ or λ than its key and its report line say."""
    expected: dict[str, Any] = {"dataset": point.dataset, "seed": point.seed, "cem_lambda": point.cem_lambda}
    if point.sigma is not None:
        expected["noise_std"] = point.sigma
    if point.cut_layer is not None:
        expected["cut_layer"] = point.cut_layer
    if spec.arch is not None:
        expected["arch"] = spec.arch
    if spec.epochs is not None:
        expected["epochs"] = spec.epochs
    if spec.width is not None:
        expected["width"] = spec.width
    if point.row.bottleneck is not None:
        expected["bottleneck"] = None if point.row.bottleneck == NO_BOTTLENECK else point.row.bottleneck
    return [f"{name}={resolved[name]!r} where the spec sets {value!r}" for name, value in expected.items()
            if name in resolved and resolved[name] != value]


def train_key(resolved: Mapping[str, Any], data_dir: str | None) -> str:
    """The key of a train cell: its resolved configuration and, when the spec gives its data set one, the data
    folder (resolved, absolute). For a folder-based data set (cifar10, facescrub, tinyimagenet, imagefolder, …)
    the folder *is* the data: another folder is another experiment. Data sets that read no folder (digits,
    mnist5k) get none in the shipped specs, so their keys are the configuration's alone."""
    return cell_key("train", {"config": resolved, **({"data_dir": data_dir} if data_dir else {})})


def expand_plan(spec: ExperimentSpec, prober: Prober) -> Plan:
    """Every cell of ``spec`` with its key; a ``ConfigError`` naming every refused value before anything runs."""
    points = grid_points(spec)
    attack_argvs = {(a.name, seed): attack_args(a, seed) for a in spec.attacks for seed in spec.seeds}
    probe = prober([p.args for p in points], list(attack_argvs.values()))
    problems = _name_problems(spec, probe)
    _raise_problems(problems, spec)  # an unknown name explains every refusal below it: report it alone
    refused: set[tuple[str, str, str]] = set()
    for point in points:
        error = probe.train[point.args].error
        if error is not None and (point.row.label, point.dataset, error) not in refused:  # not once per seed and λ
            refused.add((point.row.label, point.dataset, error))
            problems.append(f"cem-train refuses row {point.row.label!r} on {point.dataset} "
                            f"(σ={point.sigma if point.sigma is not None else 'default'}, λ={point.cem_lambda:g}): "
                            f"{error}")
    for (name, _), argv in attack_argvs.items():
        error = probe.attack[argv].error
        if error is not None:
            problems.append(f"cem-attack refuses [attacks.{name}]: {error}")
    for point in points:
        resolved = probe.train[point.args].resolved
        overridden = overridden_settings(point, spec, resolved) if resolved is not None else []
        if overridden:
            problems.append(f"train.extra_args override what the spec sets for row {point.row.label!r} on "
                            f"{point.dataset} (seed {point.seed}): {', '.join(overridden)}")
    _raise_problems(problems, spec)
    train_cells = []
    for point in points:
        resolved = probe.train[point.args].resolved or {}
        train_cells.append(TrainCell(
            key=train_key(resolved, spec.data_dir_for(point.dataset)), dataset=point.dataset,
            arch=str(resolved["arch"]),
            cut_layer=int(resolved["cut_layer"]), row=point.row.label, sigma=float(resolved["noise_std"]),
            cem_lambda=float(resolved["cem_lambda"]), seed=point.seed, args=point.args, config=resolved))
    attack_cells: dict[str, AttackCell] = {}
    for train in train_cells:
        for attack in spec.attacks:
            argv = attack_argvs[(attack.name, train.seed)]
            resolved = probe.attack[argv].resolved or {}
            key = cell_key("attack", {"train": train.key, "config": resolved})
            attack_cells.setdefault(key, AttackCell(key, train.key, attack.name, train.seed, argv, resolved))
    return Plan(name=spec.name, rows=tuple(r.label for r in spec.rows), attacks=tuple(a.name for a in spec.attacks),
                train=tuple(train_cells), attack=tuple(attack_cells.values()), data_dirs=dict(spec.data_dirs),
                spec_text=spec.text, spec_path=spec.path)
