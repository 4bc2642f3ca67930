"""Ask the trainer and the attacker, in a child process, whether they accept each cell and what it resolves to.

The kinds of defense live in ``training.defenses``' registry and the attack names
in ``attacker.attack_names``, and this package may not import either app (the
apps meet only in the kernel, tests/test_import_contract.py). Copying the lists
here would go stale the day a defense is added; parsing ``--help`` text is
fragile. So, like the cells themselves, the check runs the apps' own code in a
separate process: one ``python -c`` child per run parses every cell's
``cem-train`` and ``cem-attack`` arguments with those CLIs' own parsers, builds
their configurations (``resolve_config`` and the defense stack for training,
``AuditSpec`` for attacks) and prints, per argument list, either the resolved
configuration or the error the CLI would stop with. No data set is loaded and no
model built, so a bad spec fails in seconds, before any cell runs. The kernel's
registries (``cem.data.available_datasets()``, ``cem.models.available_archs()``) are
read there too: they load torch, which this process then never needs for a dry
run or a refused spec.

The resolved configuration is also what a cell's key hashes (``experiment.cells``):
a setting left to the trainer's per-data-set profile (epochs, width, σ) or to an
attack's own config (the GAN's ``GanAttackConfig``: epochs, learning rates,
``n_critic``, …) enters the key as the value the app would use, so a changed
default reruns the cells it changes instead of returning stale ones. The attack's
configs are rebuilt here the way ``attacker.attacks.runner.run_attack`` builds
them from the ``AuditSpec`` (it takes no GAN settings but ``epochs``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cem.errors import CEMError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 600.0
PLACEHOLDER = "__cem_experiment_probe__"  # --out / --bundle: required flags, never touched by a parse

Argv = tuple[str, ...]

# Run as `python -c`: its own process, so the app imports stay out of this package (module docstring).
PROBE_SOURCE = r"""
import contextlib, dataclasses, io, json, sys

request = json.load(sys.stdin)
EXECUTION_ONLY = ("out_dir", "data_dir", "download", "device", "workers", "progress")


def parse(parser, argv):
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv), None
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        return None, lines[-1] if lines else "invalid arguments"


def failed(exc):
    return {"error": " ".join(str(exc).split()) or type(exc).__name__}


import training.cli as train_cli
from training.cli import config_from_args, get_args_parser as train_parser
from training.config import resolve_config
from training.defenses import available_defenses
from training.trainer import FIELD_DEFENSES, build_defenses
from attacker.attack_names import ATTACKS, NETWORK_ATTACKS, OPTIMIZING_ATTACKS, AttackName
from attacker.attacks.gan import GanAttackConfig
from attacker.attacks.runner import GAN_PRETRAIN_RATIO
from attacker.cli import build_spec, get_args_parser as attack_parser
from cem.data import available_datasets
from cem.errors import CEMError
from cem.models import available_archs


def resolve_train(argv):
    args, error = parse(train_parser(), argv)
    if error:
        return {"error": error}
    # --nproc N (DistributedDataParallel) is not in TrainConfig but changes what trains (per-process batch
    # statistics, data order): it enters the key when it is not 1, so the keys of one-process cells stay as they were
    nproc = getattr(args, "nproc", 1)
    try:
        config = resolve_config(config_from_args(args))
        defenses = build_defenses(config)
        records = [defense.record() for defense in defenses.defenses]
        if nproc < 1:
            raise ValueError(f"expected --nproc >= 1, got {nproc}")
        check_data_parallel = getattr(train_cli, "check_data_parallel", None)
        if nproc > 1 and check_data_parallel is not None:
            check_data_parallel(config.batch_size, defenses, nproc)
    except (CEMError, ValueError, KeyError, TypeError) as exc:  # what the CLI would report as a usage error
        return failed(exc)
    resolved = dataclasses.asdict(config)
    for name in EXECUTION_ONLY:
        resolved.pop(name, None)
    resolved["defenses"] = records
    if nproc != 1:
        resolved["nproc"] = nproc
    return {"resolved": resolved}


def decoder_settings(spec):
    # min_steps 0 (no minimum) trains what a spec without the key trained: it stays out of the key, so those
    # cells keep their keys; any other value enters it
    settings = dataclasses.asdict(spec.decoder_config)
    if settings["min_steps"] == 0:
        del settings["min_steps"]
    return settings


def resolve_attack(argv):
    args, error = parse(attack_parser(), argv)
    if error:
        return {"error": error}
    # --nproc N (a data-parallel attack) is not in AuditSpec but changes what trains (per-process BatchNorm
    # statistics, noise draws): it enters the key when it is not 1, as cem-train's does
    nproc = getattr(args, "nproc", 1)
    try:
        spec = build_spec(args)
        name = AttackName(spec.attack)
        if nproc < 1:
            raise ValueError(f"expected --nproc >= 1, got {nproc}")
    except (CEMError, ValueError, KeyError, TypeError) as exc:
        return failed(exc)
    resolved = {
        "attack": spec.attack, "epochs": spec.epochs, "seed": spec.seed, "dataset": spec.dataset,
        "network": decoder_settings(spec) if name in NETWORK_ATTACKS else None,
        "optimize": dataclasses.asdict(spec.optimize_config) if name in OPTIMIZING_ATTACKS else None,
    }
    if name is AttackName.GAN:  # what attacker.attacks.runner.run_attack trains: its own config, defaults filled
        gan = GanAttackConfig() if spec.epochs is None else dataclasses.replace(GanAttackConfig(), epochs=spec.epochs)
        resolved["gan"] = dataclasses.asdict(gan)
        resolved["gan_pretrain_epochs"] = -(-gan.epochs // GAN_PRETRAIN_RATIO)
    if nproc != 1:
        resolved["nproc"] = nproc
    return {"resolved": resolved}


print(json.dumps({
    "datasets": available_datasets(),
    "archs": available_archs(),
    "defenses": available_defenses(),
    "field_defenses": sorted(FIELD_DEFENSES),
    "attacks": list(ATTACKS),
    "train": [resolve_train(argv) for argv in request["train"]],
    "attack": [resolve_attack(argv) for argv in request["attack"]],
}, default=str))
"""


@dataclass(frozen=True)
class Resolution:
    """What a CLI made of one argument list: its resolved configuration, or the error it would stop with."""

    resolved: Mapping[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class ProbeResult:
    """The registries (the kernel's data sets and archs, the trainer's defenses, the attacker's attacks) and one
    ``Resolution`` per argument list asked about."""

    datasets: tuple[str, ...]
    archs: tuple[str, ...]
    defenses: tuple[str, ...]
    field_defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    train: Mapping[Argv, Resolution]
    attack: Mapping[Argv, Resolution]


def train_probe_argv(args: Sequence[str]) -> list[str]:
    """A cell's ``cem-train`` arguments with the flags a parse requires."""
    return [*args, "--out", PLACEHOLDER]


def attack_probe_argv(args: Sequence[str]) -> list[str]:
    """A cell's ``cem-attack`` arguments with the flags a parse requires."""
    return ["--bundle", PLACEHOLDER, *args, "--out", PLACEHOLDER]


def _resolution(entry: Any) -> Resolution:
    if not isinstance(entry, dict) or not ({"resolved", "error"} & set(entry)):
        raise CEMError(f"expected a resolution from the probe, got {entry!r}")
    return Resolution(entry.get("resolved"), entry.get("error"))


def run_probe(train_args: Sequence[Argv], attack_args: Sequence[Argv], timeout_s: float = PROBE_TIMEOUT_S,
              python: str = sys.executable) -> ProbeResult:
    """Resolve every distinct argument list in one child process of ``python``."""
    trains = list(dict.fromkeys(train_args))
    attacks = list(dict.fromkeys(attack_args))
    request = {"train": [train_probe_argv(a) for a in trains], "attack": [attack_probe_argv(a) for a in attacks]}
    logger.info("probing %d training and %d attack configurations", len(trains), len(attacks))
    try:
        done = subprocess.run([python, "-c", PROBE_SOURCE], input=json.dumps(request), capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CEMError(f"the probe of cem-train and cem-attack did not answer within {timeout_s:.0f} s") from exc
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise CEMError(f"the probe of cem-train and cem-attack failed (exit {done.returncode}): {tail}; is the "
                       "experiment extra installed (pip install 'cem-split[experiment]')?")
    try:
        answer = json.loads(lines[-1])
        return ProbeResult(
            datasets=tuple(answer["datasets"]),
            archs=tuple(answer["archs"]),
            defenses=tuple(answer["defenses"]),
            field_defenses=tuple(answer["field_defenses"]),
            attacks=tuple(answer["attacks"]),
            train=dict(zip(trains, (_resolution(e) for e in answer["train"]), strict=True)),
            attack=dict(zip(attacks, (_resolution(e) for e in answer["attack"]), strict=True)),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CEMError(f"expected the probe's JSON answer, got {lines[-1][:200]!r}: {exc}") from exc
