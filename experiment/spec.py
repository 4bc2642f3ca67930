"""The experiment spec: a small TOML file parsed into frozen dataclasses, checked before anything runs.

Every key is listed here and an unknown one is an error, so a typo ("epoch" for
"epochs") fails at once instead of silently taking a default. This module checks
the spec's shape and types, and ``check_names`` its names against the registries a
probe process reports (``experiment.probe``: the kernel's data sets and archs, the
trainer's defenses, the attacker's attacks); every cell's settings are checked by
the trainer's and the attacker's own code there, before any cell runs.
docs/experiments.md documents every key.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cem.errors import ConfigError

# Every key a table may hold; anything else is refused by name.
EXPERIMENT_KEYS = ("name", "datasets", "seeds", "arch", "cut_layers", "data_dir")
TRAIN_KEYS = ("epochs", "width", "bottleneck", "sigma", "cem_lambdas", "extra_args")
ROW_KEYS = ("label", "defenses", "sigma", "cem_lambdas", "bottleneck")
ATTACK_KEYS = ("epochs", "steps", "network_channels", "network_blocks", "min_steps", "extra_args")
TOP_KEYS = ("experiment", "train", "rows", "attacks")
# cem-train flags the runner sets from the spec or per run; ``extra_args`` may not repeat them.
MANAGED_TRAIN_FLAGS = (
    "--dataset", "--data-dir", "--download", "--arch", "--cut-layer", "--bottleneck", "--width", "--noise-std",
    "--defense", "--cem-lambda", "--epochs", "--seed", "--device", "--threads", "--out", "--json", "--no-progress",
)
# cem-attack flags the runner sets from the spec or per run; an attack's ``extra_args`` may not repeat them.
MANAGED_ATTACK_FLAGS = (
    "--bundle", "--attack", "--data-dir", "--epochs", "--steps", "--network-channels", "--network-blocks",
    "--min-steps", "--seed", "--device", "--threads", "--out", "--json",
)
NO_BOTTLENECK = "none"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\- ]*$")


@dataclass(frozen=True)
class RowSpec:
    """One defense row of Table 1: its defenses (``cem-train --defense`` specs) and the σ, λ and bottleneck it
    trains at. ``sigmas`` ``(None,)`` means the data set's default σ; ``bottleneck`` None means cem-train's
    default (8 channels), ``"none"`` the No_defense baseline without one."""

    label: str
    defenses: tuple[str, ...]
    sigmas: tuple[float | None, ...]
    cem_lambdas: tuple[float, ...]
    bottleneck: int | str | None = None

    @property
    def slug(self) -> str:
        """The label as a file-name part."""
        return slugify(self.label)


@dataclass(frozen=True)
class AttackSpec:
    """One attack and its settings (``cem-attack`` flags; None: the attack's default); ``extra_args``: other
    cem-attack flags, verbatim (``--nproc N``)."""

    name: str
    epochs: int | None = None
    steps: int | None = None
    network_channels: int | None = None
    network_blocks: int | None = None
    min_steps: int | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentSpec:
    """A parsed spec. ``cut_layers`` ``(None,)`` means the arch's default cut; ``data_dirs`` maps a data set
    (or ``"*"``, every data set) to the folder holding its files."""

    name: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    rows: tuple[RowSpec, ...]
    attacks: tuple[AttackSpec, ...]
    arch: str | None = None
    cut_layers: tuple[int | None, ...] = (None,)
    epochs: int | None = None
    width: float | None = None
    extra_args: tuple[str, ...] = ()
    data_dirs: Mapping[str, str] = field(default_factory=dict)
    text: str = ""  # the TOML source, stored with the run so the report shows what ran
    path: str = ""

    def data_dir_for(self, dataset: str) -> str | None:
        return self.data_dirs.get(dataset, self.data_dirs.get("*"))


def slugify(text: str) -> str:
    """``"Noise_ARL+CEM"`` -> ``"noise_arl-cem"``: lower case, safe in file names."""
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-") or "row"


def _where(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], table: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [{table}]; expected keys among {list(allowed)}")


def _table(data: Any, table: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected [{table}] to be a table, got {type(data).__name__}")
    return data


def _number(value: Any, where: str, least: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < least:
        raise ConfigError(f"expected {where} to be a number >= {least:g}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"expected {where} to be an integer >= {least}, got {value!r}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    """A TOML array, or one scalar taken as a one-element list."""
    items = list(value) if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"expected {where} to hold at least one value, got an empty list")
    return items


def _unique(values: Sequence[Any], where: str) -> None:
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"expected distinct values in {where}, got {repeated[0]} more than once")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"expected {where} to be a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _bottleneck(value: Any, where: str) -> int | str:
    if isinstance(value, str) and value.strip().lower() == NO_BOTTLENECK:
        return NO_BOTTLENECK
    return _integer(value, where, 1)


def _sigmas(value: Any, where: str) -> tuple[float | None, ...]:
    sigmas = tuple(_number(v, where) for v in _list(value, where))
    _unique(sigmas, where)
    return sigmas


def _lambdas(value: Any, where: str) -> tuple[float, ...]:
    lambdas = tuple(_number(v, where) for v in _list(value, where))
    _unique(lambdas, where)
    return lambdas


def _parse_rows(data: Any, defaults: Mapping[str, Any]) -> tuple[RowSpec, ...]:
    if not isinstance(data, list) or not data:
        raise ConfigError("expected at least one [[rows]] table, got none")
    rows = []
    for index, raw in enumerate(data, start=1):
        table = f"rows #{index}"
        row = _table(raw, table)
        _check_keys(row, ROW_KEYS, table)
        label = row.get("label")
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ConfigError(f"expected {table}.label to be a name of letters, digits, '_', '.', '+', '-' or "
                              f"spaces, got {label!r}")
        table = f"rows {label!r}"
        lambdas = row.get("cem_lambdas", defaults.get("cem_lambdas"))
        if lambdas is None:
            raise ConfigError(f"expected cem_lambdas in [train] or in {table} (0 = without CEM), got neither")
        sigma = row.get("sigma", defaults.get("sigma"))
        bottleneck = row.get("bottleneck", defaults.get("bottleneck"))
        rows.append(RowSpec(
            label=label,
            defenses=_strings(row.get("defenses", []), f"{table}.defenses"),
            sigmas=(None,) if sigma is None else _sigmas(sigma, f"{table}.sigma"),
            cem_lambdas=_lambdas(lambdas, f"{table}.cem_lambdas"),
            bottleneck=None if bottleneck is None else _bottleneck(bottleneck, f"{table}.bottleneck"),
        ))
    _unique([row.label for row in rows], "the rows' labels")
    _unique([row.slug for row in rows], "the rows' labels as file names (lower case, punctuation as '-')")
    return tuple(rows)


def _parse_attacks(data: Any) -> tuple[AttackSpec, ...]:
    attacks = _table(data, "attacks")
    if not attacks:
        raise ConfigError("expected at least one [attacks.<name>] table, got none")
    parsed = []
    for name, raw in attacks.items():
        table = f"attacks.{name}"
        settings = _table(raw, table)
        _check_keys(settings, ATTACK_KEYS, table)
        least = {"epochs": 1, "steps": 1, "network_channels": 1, "network_blocks": 0, "min_steps": 0}
        values = {key: _integer(settings[key], f"{table}.{key}", least[key]) for key in least if key in settings}
        extra = _extra_args(settings.get("extra_args", []), f"{table}.extra_args", MANAGED_ATTACK_FLAGS)
        parsed.append(AttackSpec(name=name, **values, extra_args=extra))
    return tuple(parsed)


def _parse_data_dirs(value: Any) -> dict[str, str]:
    """``data_dir``: one folder for every data set, or a table data set -> folder; each must exist (relative paths
    are taken from the current directory, as the CLIs take ``--data-dir``)."""
    if value is None:
        return {}
    table = {"*": value} if isinstance(value, str) else _table(value, "experiment.data_dir")
    folders = {}
    for dataset, folder in table.items():
        where = "experiment.data_dir" + ("" if dataset == "*" else f".{dataset}")
        if not isinstance(folder, str) or not folder.strip():
            raise ConfigError(f"expected {where} to be a path, got {folder!r}")
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"expected {where} to be a folder holding the data set's files, got {folder!r}, which "
                              "is not a folder")
        folders[dataset] = str(path)
    return folders


def managed_flag(arg: str, managed_flags: Sequence[str] = MANAGED_TRAIN_FLAGS) -> str | None:
    """The managed flag (cem-train's by default) ``arg`` would set, or None. argparse takes any unambiguous
    prefix of a long flag for the flag itself (``--se 7`` is ``--seed 7``), so a prefix counts as the flag:
    otherwise ``extra_args`` could override a value the spec sets, and every seed would share one key."""
    if not arg.startswith("--") or arg == "--":
        return None
    flag = arg.split("=", 1)[0]
    return next((managed for managed in managed_flags if managed.startswith(flag)), None)


def _extra_args(value: Any, where: str = "train.extra_args",
                managed_flags: Sequence[str] = MANAGED_TRAIN_FLAGS) -> tuple[str, ...]:
    args = _strings(value, where)
    for arg in args:
        managed = managed_flag(arg, managed_flags)
        if managed is not None:
            shown = managed if arg.split("=", 1)[0] == managed else f"{managed} (as its abbreviation)"
            raise ConfigError(f"expected {where} without {shown} (the spec or the runner sets it), got {arg!r}")
    return args


def parse_spec(text: str, path: str = "") -> ExperimentSpec:
    """The spec in ``text`` (TOML), its shape and types checked; names are checked by ``check_names``."""
    data = _read_toml(text, path)
    _check_keys(data, TOP_KEYS, "top level")
    experiment = _table(data.get("experiment"), "experiment") if "experiment" in data else {}
    _check_keys(experiment, EXPERIMENT_KEYS, "experiment")
    train = _table(data.get("train", {}), "train")
    _check_keys(train, TRAIN_KEYS, "train")
    name = experiment.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected experiment.name to be a non-empty string, got {name!r}")
    if "datasets" not in experiment:
        raise ConfigError("expected experiment.datasets (a list of data set names), got none")
    datasets = _strings(_list(experiment["datasets"], "experiment.datasets"), "experiment.datasets")
    _unique(datasets, "experiment.datasets")
    if "seeds" not in experiment:
        raise ConfigError("expected experiment.seeds (a list of integers), got none")
    seeds = tuple(_integer(s, "experiment.seeds", 0) for s in _list(experiment["seeds"], "experiment.seeds"))
    _unique(seeds, "experiment.seeds")
    arch = experiment.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise ConfigError(f"expected experiment.arch to be a name, got {arch!r}")
    cuts = experiment.get("cut_layers")
    cut_layers: tuple[int | None, ...] = (None,) if cuts is None else tuple(
        _integer(c, "experiment.cut_layers", 1) for c in _list(cuts, "experiment.cut_layers"))
    _unique(cut_layers, "experiment.cut_layers")
    if "rows" not in data:
        raise ConfigError("expected at least one [[rows]] table, got none")
    if "attacks" not in data:
        raise ConfigError("expected at least one [attacks.<name>] table, got none")
    return ExperimentSpec(
        name=name.strip(),
        datasets=datasets,
        seeds=seeds,
        rows=_parse_rows(data["rows"], train),
        attacks=_parse_attacks(data["attacks"]),
        arch=arch,
        cut_layers=cut_layers,
        epochs=None if "epochs" not in train else _integer(train["epochs"], "train.epochs", 1),
        width=None if "width" not in train else _number(train["width"], "train.width", 1e-9),
        extra_args=_extra_args(train.get("extra_args", [])),
        data_dirs=_parse_data_dirs(experiment.get("data_dir")),
        text=text,
        path=path,
    )


def _read_toml(text: str, path: str) -> dict[str, Any]:
    try:  # tomllib is Python 3.11's; on 3.10 the experiment extra installs tomli, the same parser
        tomllib = importlib.import_module("tomllib")
    except ModuleNotFoundError:
        try:
            tomllib = importlib.import_module("tomli")
        except ModuleNotFoundError:
            version = sys.version.split()[0]
            raise ConfigError(f"expected tomli on Python {version} to read TOML specs: pip install "
                              "'cem-split[experiment]'") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"expected a TOML spec{f' in {path}' if path else ''}, got a syntax error: {exc}") from exc
    return data


def load_spec(path: Path) -> ExperimentSpec:
    """Read and parse the spec file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"expected a spec file at {path}, but it does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the spec {path}: {exc}") from exc
    return parse_spec(text, str(path))


def check_names(spec: ExperimentSpec, datasets: Sequence[str], archs: Sequence[str]) -> list[str]:
    """What ``spec`` names that the kernel's registries (``cem.data.available_datasets()``,
    ``cem.models.available_archs()``, as the probe reports them) do not know: one message per bad value."""
    problems = [f"unknown data set {d!r} in experiment.datasets; expected one of {list(datasets)}"
                for d in spec.datasets if d not in datasets]
    if spec.arch is not None and spec.arch not in archs:
        problems.append(f"unknown arch {spec.arch!r} in experiment.arch; expected one of {list(archs)}")
    problems += [f"expected experiment.data_dir keys among the spec's data sets {list(spec.datasets)} (or a single "
                 f"path), got {d!r}" for d in spec.data_dirs if d != "*" and d not in spec.datasets]
    return problems
