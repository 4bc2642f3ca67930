"""Table 1 from stored cells: mean ± 95 % interval over seeds, the paired CEM gain per row, the paper's averages.

Reads only what ``cem-experiment run`` stored (never trains). Per *variant* (one
table group = data set, arch and cut; one row; one σ; one λ) every metric is
the mean over the seeds with Student's t interval (``cem.stats.mean_interval``;
one seed: no interval). Metrics: the test accuracy and, per attack, the MSE of
the ``train`` and ``infer`` columns.

The CEM gain of a row is paired per seed against the same row at the same σ with
λ = 0: MSE as relative change in %, accuracy as a difference in points; then mean
± interval over the seeds. The paper's summary rows average, per λ > 0, over the
(row, σ) pairs that have both λ = 0 and that λ (so the No_defense baseline, which
has no CEM variant, is left out): per seed the mean over those pairs, then mean ±
interval over the seeds. Their gain is the relative change of the two averages,
100·(avg_with − avg_without)/avg_without in %, accuracy in points, per attack and
column; the paper's headline numbers ("an average increase in reconstruction MSE
of 24.0 % for training data and 12.9 % for inference data") are the mean of those
per-attack gains over the attacks, per column (``AverageBlock.attack_mean_gain``).

With several attacks Table 1 also scores the *strongest* of them (``STRONGEST``):
per model and column the lowest MSE any attack reached, where every attack of the
grid has a number for it. A defense is as private as its strongest attacker
allows, and the paper's mean over the attacks hides a weak attack beside a strong
one; the strongest column is the one an auditor should read. It is flagged where
any attack behind it did not converge (a stronger run of a weaker attack might
have won), and ``Table1.strongest`` counts, per group and column, which attack
won on how many models (a tie, such as a GAN that never beat the decoder it
started from, counts for the tied attacks together: ``"decoder=gan"``).

Every gain carries how many of the models behind it had an attack that did not
converge (both variants counted): a non-converged attack over-states one side's
MSE and so can make or break a gain. A value that is not finite (an attack that
diverged to NaN or inf) is left out of every mean and listed
(``Collected.nonfinite``) instead of failing the report; a seed whose λ = 0 MSE is
0 has no relative change and is left out of its paired gain, counted per line
(``GainLine.zero_baseline``).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cem.stats import Estimate, mean_interval
from experiment.cells import Plan
from experiment.records import COLUMNS, attack_details, bound_exceeded, finite_number, model_details
from experiment.store import CellStore

ACCURACY = "accuracy"
STRONGEST = "strongest"  # not an attack: per model and column, the lowest MSE of the attacks run (module docstring)


def mse_metric(attack: str, column: str) -> str:
    return f"{attack}_mse_{column}"


def scored_attacks(attacks: Sequence[str]) -> list[str]:
    """What Table 1 has MSE columns for: each attack, and with several of them also the strongest."""
    return [*attacks, STRONGEST] if len(attacks) > 1 else list(attacks)


def metric_names(attacks: Sequence[str]) -> list[str]:
    """Accuracy, then each scored attack's MSE in the ``train`` and ``infer`` columns: Table 1's columns."""
    return [ACCURACY, *(mse_metric(attack, column) for attack in scored_attacks(attacks) for column in COLUMNS)]


@dataclass(frozen=True)
class Observation:
    """One trained model (one seed of one variant) and what its attacks scored; ``values`` maps a metric name to
    its (finite) number, ``flags`` a metric to why its attack did not converge, ``unjudged`` a metric to why its
    convergence could not be judged."""

    group: str
    row: str
    sigma: float
    cem_lambda: float
    seed: int
    train_key: str
    values: Mapping[str, float]
    entropy_bound: float | None = None
    flags: Mapping[str, str] = field(default_factory=dict)
    attack_keys: Mapping[str, str] = field(default_factory=dict)
    unjudged: Mapping[str, str] = field(default_factory=dict)
    # beside Table 1 (experiment.detail): per attack and column PSNR, SSIM, attack accuracy and best epoch, and the
    # model's ξ
    details: Mapping[str, float] = field(default_factory=dict)
    # per ξ kind (estimate, relative): whether one of the model's attacks reconstructed below it
    xi_exceeded: Mapping[str, bool] = field(default_factory=dict)

    @property
    def variant(self) -> tuple[str, str, float, float]:
        return self.group, self.row, self.sigma, self.cem_lambda


@dataclass(frozen=True)
class Collected:
    """The observations of a plan's stored cells, the cells still missing (described), and the stored values
    left out because they are not finite (one dict per value: the model, the metric and the value as text)."""

    observations: list[Observation]
    missing: list[str]
    nonfinite: list[dict[str, Any]] = field(default_factory=list)


def collect(plan: Plan, store: CellStore) -> Collected:
    """Join every grid point's stored train cell with its stored attack cells."""
    attacks = {(cell.train_key, cell.attack): cell for cell in plan.attack}
    observations, missing, nonfinite = [], [], []
    for point in plan.train:
        record = store.load("train", point.key)
        if record is None:
            missing.append(f"train {point.key}: {point.describe()}")
            missing += [f"attack {attacks[(point.key, a)].key}: {a} on {point.describe()}" for a in plan.attacks
                        if (point.key, a) in attacks]
            continue
        where = {"group": point.group, "row": point.row, "sigma": point.sigma, "cem_lambda": point.cem_lambda,
                 "seed": point.seed, "train_key": point.key}
        values: dict[str, float] = {}
        accuracy = record.get("accuracy")
        if (finite := finite_number(accuracy)) is not None:
            values[ACCURACY] = finite
        elif accuracy is not None:
            nonfinite.append({**where, "metric": ACCURACY, "attack": None, "column": None, "value": str(accuracy)})
        flags: dict[str, str] = {}
        unjudged: dict[str, str] = {}
        keys: dict[str, str] = {}
        details = model_details(record)
        exceeded: dict[str, bool] = {}
        for attack in plan.attacks:
            cell = attacks.get((point.key, attack))
            stored = store.load("attack", cell.key) if cell is not None else None
            if cell is None or stored is None:
                missing.append(f"attack {cell.key if cell else '?'}: {attack} on {point.describe()}")
                continue
            keys[attack] = cell.key
            details.update(attack_details(attack, stored))
            for kind, over in bound_exceeded(stored).items():
                exceeded[kind] = exceeded.get(kind, False) or over
            for column in COLUMNS:
                metric = mse_metric(attack, column)
                mse = stored["metrics"][column]["mse"]
                if (value := finite_number(mse)) is None:  # diverged: listed, never averaged (mean_interval refuses)
                    nonfinite.append({**where, "metric": metric, "attack": attack, "column": column,
                                      "value": str(mse), "attack_key": cell.key})
                    continue
                values[metric] = value
                detail = stored.get("columns", {}).get(column) or {}
                if detail.get("not_converged"):
                    flags[metric] = detail["not_converged"]
                if detail.get("unjudged"):
                    unjudged[metric] = detail["unjudged"]
        bound = finite_number((record.get("metrics") or {}).get("entropy_bound"))
        observations.append(Observation(
            group=point.group, row=point.row, sigma=point.sigma, cem_lambda=point.cem_lambda, seed=point.seed,
            train_key=point.key, values=values, entropy_bound=bound, flags=flags, attack_keys=keys,
            unjudged=unjudged, details=details, xi_exceeded=exceeded))
    return Collected(observations, list(dict.fromkeys(missing)), nonfinite)


@dataclass(frozen=True)
class VariantLine:
    """One line of Table 1: a row at one σ and λ, each metric over its seeds, and how many seeds were flagged."""

    group: str
    row: str
    sigma: float
    cem_lambda: float
    seeds: tuple[int, ...]
    estimates: Mapping[str, Estimate | None]
    not_converged: Mapping[str, int]

    @property
    def label(self) -> str:
        return f"{self.row}+CEM" if self.cem_lambda > 0 else self.row


@dataclass(frozen=True)
class GainLine:
    """A row's CEM gain at one σ and λ > 0, paired per seed with λ = 0 (MSE in %, accuracy in points).

    ``not_converged``: per metric, the models behind the gain (both variants of the paired seeds) whose attack
    did not converge; ``zero_baseline``: per metric, the paired seeds left out because their λ = 0 MSE is 0."""

    group: str
    row: str
    sigma: float
    cem_lambda: float
    seeds: tuple[int, ...]
    estimates: Mapping[str, Estimate | None]
    not_converged: Mapping[str, int] = field(default_factory=dict)
    zero_baseline: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AverageBlock:
    """The paper's summary rows for one group and λ > 0: the averages over the (row, σ) pairs with both variants,
    and the relative change of those averages (``gain``: MSE in %, accuracy in points)."""

    group: str
    cem_lambda: float
    pairs: tuple[tuple[str, float], ...]
    without_cem: Mapping[str, Estimate | None]
    with_cem: Mapping[str, Estimate | None]
    gain: Mapping[str, float | None]
    not_converged: Mapping[str, int] = field(default_factory=dict)  # flagged models among those averaged
    # per column (train, infer): the mean over the attacks of their MSE gains, the paper's headline number
    # (None unless every attack has its gain), and the flagged models behind it
    attack_mean_gain: Mapping[str, float | None] = field(default_factory=dict)
    attack_mean_not_converged: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Table1:
    """``attacks``: the grid's attacks (not ``STRONGEST``); ``metrics``: the table's columns (``metric_names``);
    ``strongest``: per group and column, on how many models each attack was the strongest (several attacks)."""

    attacks: tuple[str, ...]
    metrics: tuple[str, ...]
    groups: tuple[str, ...]
    variants: tuple[VariantLine, ...]
    gains: tuple[GainLine, ...]
    averages: tuple[AverageBlock, ...]
    strongest: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)


def _estimate(values: Iterable[float]) -> Estimate | None:
    data = list(values)
    return mean_interval(data) if data else None


def _per_seed(observations: Iterable[Observation], metric: str) -> dict[int, float]:
    return {o.seed: o.values[metric] for o in observations if metric in o.values}


def seed_estimate(per_model: Iterable[Mapping[str, float]], metric: str) -> Estimate | None:
    """``metric`` over the models (one per seed) whose numbers (``per_model``: their Table 1 ``values`` or their
    ``details``) have it; None when none has it."""
    return _estimate(numbers[metric] for numbers in per_model if metric in numbers)


def paired_change(metric: str, base: float, other: float) -> float | None:
    """``other`` against ``base`` on one metric (CEM's gain, or one attack against another): accuracy in points,
    anything else (MSE) as relative change in %; None for a relative change from 0."""
    if metric == ACCURACY:
        return 100.0 * (other - base)
    return 100.0 * (other - base) / base if base else None


def paired_estimate(metric: str, pairs: Iterable[tuple[float, float]]) -> tuple[Estimate | None, int]:
    """The mean ± interval of ``paired_change`` over (base, other) pairs, one per model, and how many pairs were
    left out for a base of 0 (no relative change)."""
    changes = [paired_change(metric, base, other) for base, other in pairs]
    return _estimate(c for c in changes if c is not None), sum(c is None for c in changes)


def grouped_by_variant(observations: Sequence[Observation],
                       rows: Sequence[str]) -> dict[tuple[str, str, float, float], list[Observation]]:
    """The observations of each variant (group, row, σ, λ), each variant's by seed, the variants in Table 1's line
    order: groups as first seen, rows in ``rows``' order (unknown rows after, by name), then σ and λ ascending."""
    grouped: dict[tuple[str, str, float, float], list[Observation]] = {}
    for o in observations:
        grouped.setdefault(o.variant, []).append(o)
    groups = list(dict.fromkeys(o.group for o in observations))
    rank = {row: i for i, row in enumerate(rows)}
    order = sorted(grouped, key=lambda v: (groups.index(v[0]), rank.get(v[1], len(rank)), v[1], v[2], v[3]))
    return {v: sorted(grouped[v], key=lambda o: o.seed) for v in order}


def with_strongest(observations: Sequence[Observation], attacks: Sequence[str]
                   ) -> tuple[list[Observation], dict[str, dict[str, dict[str, int]]]]:
    """``observations`` with the ``STRONGEST`` MSE of each column that every attack scored, flagged where any
    attack behind it was; and per group and column how many models each attack (or tie of attacks) won. With one
    attack: ``observations`` as they are (there is nothing to compare)."""
    if len(attacks) < 2:
        return list(observations), {}
    scored: list[Observation] = []
    wins: dict[str, dict[str, dict[str, int]]] = {}
    for o in observations:
        values, flags = dict(o.values), dict(o.flags)
        for column in COLUMNS:
            metrics = {attack: mse_metric(attack, column) for attack in attacks}
            if not all(m in o.values for m in metrics.values()):
                continue
            lowest = min(o.values[m] for m in metrics.values())
            winner = "=".join(attack for attack, m in metrics.items() if o.values[m] == lowest)
            strongest = mse_metric(STRONGEST, column)
            values[strongest] = lowest
            behind = [f"{attack}: {o.flags[m]}" for attack, m in metrics.items() if m in o.flags]
            if behind:
                flags[strongest] = "; ".join(behind)
            counts = wins.setdefault(o.group, {}).setdefault(column, {})
            counts[winner] = counts.get(winner, 0) + 1
        scored.append(dataclasses.replace(o, values=values, flags=flags))
    return scored, wins


def build_table1(observations: Sequence[Observation], rows: Sequence[str], attacks: Sequence[str]) -> Table1:
    """Table 1 of ``observations`` (rows in ``rows``' order, then σ and λ ascending)."""
    metrics = metric_names(attacks)
    observations, strongest = with_strongest(observations, attacks)
    by_variant = grouped_by_variant(observations, rows)
    order = list(by_variant)
    variants, gains = [], []
    for variant, seen in by_variant.items():
        variants.append(VariantLine(*variant, seeds=tuple(o.seed for o in seen),
                                    estimates={m: seed_estimate((o.values for o in seen), m) for m in metrics},
                                    not_converged={m: sum(m in o.flags for o in seen) for m in metrics}))
        group, row, sigma, lam = variant
        base = by_variant.get((group, row, sigma, 0.0))
        if lam > 0 and base:
            estimates: dict[str, Estimate | None] = {}
            flagged: dict[str, int] = {}
            zero: dict[str, int] = {}
            paired_seeds: set[int] = set()
            for m in metrics:
                before, after = _per_seed(base, m), _per_seed(seen, m)
                common = set(before) & set(after)
                estimates[m], zero[m] = paired_estimate(m, ((before[s], after[s]) for s in sorted(common)))
                flagged[m] = sum(m in o.flags for o in (*base, *seen) if o.seed in common)
                paired_seeds |= common
            gains.append(GainLine(group, row, sigma, lam, tuple(sorted(paired_seeds)), estimates, flagged, zero))
    groups = tuple(dict.fromkeys(v[0] for v in order))
    averages = [block for group in groups for block in _averages(group, order, by_variant, metrics, attacks)]
    return Table1(tuple(attacks), tuple(metrics), groups, tuple(variants), tuple(gains), tuple(averages),
                  strongest)


def _averages(group: str, order: Sequence[tuple[str, str, float, float]],
              by_variant: Mapping[tuple[str, str, float, float], list[Observation]],
              metrics: Sequence[str], attacks: Sequence[str]) -> list[AverageBlock]:
    blocks = []
    lambdas = sorted({v[3] for v in order if v[0] == group and v[3] > 0})
    for lam in lambdas:
        pairs = [(v[1], v[2]) for v in order
                 if v[0] == group and v[3] == lam and (group, v[1], v[2], 0.0) in by_variant]
        if not pairs:
            continue
        without: dict[str, Estimate | None] = {}
        with_cem: dict[str, Estimate | None] = {}
        gain: dict[str, float | None] = {}
        flagged: dict[str, int] = {}
        for m in metrics:
            before = [_per_seed(by_variant[(group, row, sigma, 0.0)], m) for row, sigma in pairs]
            after = [_per_seed(by_variant[(group, row, sigma, lam)], m) for row, sigma in pairs]
            # seeds every pair has in both variants: the per-seed averages then cover the same models
            seeds = sorted(set.intersection(*(set(s) for s in before + after)))
            without[m] = _estimate(statistics.fmean(b[s] for b in before) for s in seeds)
            with_cem[m] = _estimate(statistics.fmean(a[s] for a in after) for s in seeds)
            base, cem = without[m], with_cem[m]
            gain[m] = paired_change(m, base.mean, cem.mean) if base is not None and cem is not None else None
            flagged[m] = sum(m in o.flags for row, sigma in pairs for variant_lambda in (0.0, lam)
                             for o in by_variant[(group, row, sigma, variant_lambda)] if o.seed in seeds)
        mean_gain: dict[str, float | None] = {}
        mean_flagged: dict[str, int] = {}
        for column in COLUMNS:
            per_attack = [gain.get(mse_metric(attack, column)) for attack in attacks]
            present = [g for g in per_attack if g is not None]
            mean_gain[column] = statistics.fmean(present) if present and len(present) == len(per_attack) else None
            mean_flagged[column] = sum(flagged.get(mse_metric(attack, column), 0) for attack in attacks)
        blocks.append(AverageBlock(group, lam, tuple(pairs), without, with_cem, gain, flagged, mean_gain,
                                   mean_flagged))
    return blocks


def _column_notes(observations: Sequence[Observation], unjudged: bool) -> list[dict[str, Any]]:
    notes = []
    for o in observations:
        for metric, note in sorted((o.unjudged if unjudged else o.flags).items()):
            attack, column = metric.rsplit("_mse_", 1)
            notes.append({"group": o.group, "row": o.row, "sigma": o.sigma, "cem_lambda": o.cem_lambda,
                          "seed": o.seed, "attack": attack, "column": column, "note": note,
                          "attack_key": o.attack_keys.get(attack)})
    return notes


def convergence_flags(observations: Sequence[Observation]) -> list[dict[str, Any]]:
    """Every (model, attack, column) whose attack did not converge, with why."""
    return _column_notes(observations, unjudged=False)


def unjudged_columns(observations: Sequence[Observation]) -> list[dict[str, Any]]:
    """Every (model, attack, column) whose attack had no validation images, so its convergence is unknown."""
    return _column_notes(observations, unjudged=True)
