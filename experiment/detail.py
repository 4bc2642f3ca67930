"""Beside Table 1: the attacks' PSNR, SSIM and attack accuracy, each model's two ξ against what was achieved, and
the attacks head to head.

Table 1 carries MSE only, as the paper's does; a reader comparing with other
work also asks for PSNR and SSIM, and an auditor for how much identity the
reconstructions leak (attack accuracy: the share the attacker's own classifier
labels correctly). Per variant line (row, σ, λ), each value is the mean over
seeds with its 95 % interval, as in Table 1, and carries the same † where an
attack behind it did not converge.

The ξ table holds each model's two ξ (``cem.bounds``: the estimate, with H(x)
from a Gaussian fit, and the relative one, with H(x) := 0) and, for each, on how
many of the line's models an attack reconstructed below it (the verdict
``cem-attack`` stored: the estimate against the MSE at the images' native
resolution, the relative ξ at the model's). Neither ξ is a proven floor; a count
above zero says so for those models in numbers, and a † on a count says that an
attack behind it did not converge, so a stronger one might have gone below.

With several attacks a head-to-head table sets each later attack against the
grid's first on the same models: its MSE relative to the first's, paired per
seed, and the epoch each model's attack returned. Table 1's Strongest column
says which attack won; this says by how much, and whether a win is a tie in
disguise: a GAN whose best epoch is 0 returned the decoder attack it starts
from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cem.stats import Estimate
from experiment.records import BEST_EPOCH, COLUMNS, DETAIL_STATS, XI_METRICS, detail_metric, xi_metric
from experiment.report import (
    Observation,
    VariantLine,
    grouped_by_variant,
    mse_metric,
    paired_estimate,
    seed_estimate,
)
from experiment.tables import NOT_CONVERGED_MARK, attack_title, count_suffix, estimates_json, gain_text

STAT_TITLES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "attack_accuracy": "attack acc. %"}
LEGEND = ("Mean ± 95 % interval (Student t) over seeds, per attack and column (`train`, `infer`); attack acc.: the "
          "share of reconstructions the attacker's classifier labels correctly (identity leakage). "
          f"{NOT_CONVERGED_MARK.strip()}: at least one model's attack behind the value did not converge. ξ: per model, "
          "the estimate (H(x) from a Gaussian fit) and the relative ξ (H(x) := 0); neither is a proven floor, and "
          "'attacks below' counts the models on which an attack reconstructed below it. Head to head (several "
          "attacks): each later attack's MSE relative to the first attack's on the same model, paired per seed, "
          "on the seeds both scored (a seed whose first attack scored MSE 0 has no relative change and is left out), "
          "and per seed the epoch whose network each learned attack returned (0: its initial one; a GAN's is the "
          "decoder attack it starts from; –: none stored).")


@dataclass(frozen=True)
class XiLine:
    """One variant's ξ of each kind over its seeds (``line.estimates``, by kind), on how many of its models (of
    ``judged``) an attack went below it, and how many of those judged had an attack that did not converge."""

    line: VariantLine
    below: Mapping[str, int]
    judged: Mapping[str, int]
    flagged: Mapping[str, int]


@dataclass(frozen=True)
class DuelLine:
    """One variant's later attacks against its first. ``line.estimates``: per later attack and column (keyed by
    ``mse_metric``) its MSE change relative to the first attack's on the same model, in %, over the seeds with
    both; ``line.not_converged``: of those models, how many had either attack flagged; ``zero_baseline``: the
    seeds left out because the first attack's MSE is 0 (no relative change). ``best_epochs``: per attack and column
    (keyed by ``detail_metric(attack, BEST_EPOCH, column)``), in seed order, the epoch each model's attack returned
    (None: none stored) and whether that attack was flagged."""

    line: VariantLine
    zero_baseline: Mapping[str, int]
    best_epochs: Mapping[str, tuple[tuple[int | None, bool], ...]]


@dataclass(frozen=True)
class DetailTable:
    """The lines of every group, in Table 1's order: per attack metrics (``lines``), the ξ lines and, with several
    attacks, the head-to-head lines (``duels``)."""

    attacks: tuple[str, ...]
    groups: tuple[str, ...]
    lines: tuple[VariantLine, ...]  # estimates keyed by ``detail_metric``
    xi: tuple[XiLine, ...]
    duels: tuple[DuelLine, ...]


def build_detail(observations: Sequence[Observation], rows: Sequence[str], attacks: Sequence[str]) -> DetailTable:
    """The detail tables of ``observations``, in Table 1's line order."""
    by_variant = grouped_by_variant(observations, rows)
    metrics = {detail_metric(a, stat, c): mse_metric(a, c) for a in attacks for stat in DETAIL_STATS for c in COLUMNS}
    lines, xi = [], []
    for variant, seen in by_variant.items():
        seeds = tuple(o.seed for o in seen)
        details = [o.details for o in seen]
        lines.append(VariantLine(*variant, seeds=seeds,
                                 estimates={m: seed_estimate(details, m) for m in metrics},
                                 not_converged={m: sum(mse in o.flags and m in o.details for o in seen)
                                                for m, mse in metrics.items()}))
        xi.append(XiLine(
            VariantLine(*variant, seeds=seeds, not_converged={},
                        estimates={kind: seed_estimate(details, xi_metric(kind)) for kind in XI_METRICS}),
            below={kind: sum(o.xi_exceeded.get(kind, False) for o in seen) for kind in XI_METRICS},
            judged={kind: sum(kind in o.xi_exceeded for o in seen) for kind in XI_METRICS},
            flagged={kind: sum(kind in o.xi_exceeded and bool(o.flags) for o in seen) for kind in XI_METRICS}))
    groups = tuple(dict.fromkeys(v[0] for v in by_variant))
    return DetailTable(tuple(attacks), groups, tuple(lines), tuple(xi), _duels(by_variant, attacks))


def _duels(by_variant: Mapping[tuple[str, str, float, float], list[Observation]],
           attacks: Sequence[str]) -> tuple[DuelLine, ...]:
    """Each later attack against the grid's first, model by model: a GAN starts from the decoder attack, so the
    pair says what the extra training bought; one attack has nothing to be set against."""
    if len(attacks) < 2:
        return ()
    first, *later = attacks
    duels = []
    for variant, seen in by_variant.items():
        estimates: dict[str, Estimate | None] = {}
        flagged: dict[str, int] = {}
        zero: dict[str, int] = {}
        for attack in later:
            for column in COLUMNS:
                metric, base = mse_metric(attack, column), mse_metric(first, column)
                paired = [o for o in seen if metric in o.values and base in o.values]
                estimates[metric], zero[metric] = paired_estimate(
                    metric, ((o.values[base], o.values[metric]) for o in paired))
                flagged[metric] = sum(metric in o.flags or base in o.flags for o in paired)
        best_epochs = {}
        for attack in attacks:
            for column in COLUMNS:
                metric, epoch = mse_metric(attack, column), detail_metric(attack, BEST_EPOCH, column)
                best_epochs[epoch] = tuple((int(o.details[epoch]) if epoch in o.details else None, metric in o.flags)
                                           for o in seen)
        duels.append(DuelLine(VariantLine(*variant, seeds=tuple(o.seed for o in seen), estimates=estimates,
                                          not_converged=flagged), zero, best_epochs))
    return tuple(duels)


def _value(stat: str, estimate: Estimate | None, seeds: int) -> str:
    if estimate is None:
        return "n/a"
    text = {"psnr": estimate.format(".2f"), "ssim": estimate.format(".3f"),
            "attack_accuracy": estimate.format(".1f", 100.0)}[stat]
    return text + count_suffix(estimate, seeds)


def attack_header(attack: str) -> list[str]:
    return ["method", "σ", "λ", "seeds",
            *(f"{attack_title(attack)} {c} {STAT_TITLES[stat]}" for stat in DETAIL_STATS for c in COLUMNS)]


def attack_lines(table: DetailTable, group: str, attack: str) -> list[list[str]]:
    lines = []
    for line in (v for v in table.lines if v.group == group):
        cells = []
        for stat in DETAIL_STATS:
            for column in COLUMNS:
                metric = detail_metric(attack, stat, column)
                cells.append(_value(stat, line.estimates.get(metric), len(line.seeds))
                             + (NOT_CONVERGED_MARK if line.not_converged.get(metric) else ""))
        lines.append([line.label, f"{line.sigma:g}", f"{line.cem_lambda:g}", str(len(line.seeds)), *cells])
    return lines


XI_HEADER = ["method", "σ", "λ", "seeds", "ξ estimate", "attacks below it", "ξ relative", "attacks below it"]


def xi_lines(table: DetailTable, group: str) -> list[list[str]]:
    lines = []
    for x in (x for x in table.xi if x.line.group == group):
        cells = []
        for kind in XI_METRICS:
            estimate = x.line.estimates.get(kind)
            seeds = len(x.line.seeds)
            cells.append("n/a" if estimate is None else estimate.format(".3g") + count_suffix(estimate, seeds))
            cells.append(f"{x.below[kind]}/{x.judged[kind]}" + (NOT_CONVERGED_MARK if x.flagged[kind] else "")
                         if x.judged[kind] else "n/a")
        lines.append([x.line.label, f"{x.line.sigma:g}", f"{x.line.cem_lambda:g}", str(len(x.line.seeds)), *cells])
    return lines


def duel_header(attacks: Sequence[str]) -> list[str]:
    first, *later = attacks
    return ["method", "σ", "λ", "seeds",
            *(title for c in COLUMNS for title in (
                *(f"{attack_title(a)} best epoch {c}" for a in attacks),
                *(f"{attack_title(a)} vs {attack_title(first)} {c}" for a in later)))]


def _epochs(best: Sequence[tuple[int | None, bool]]) -> str:
    return ", ".join("–" if epoch is None else f"{epoch}{NOT_CONVERGED_MARK if flagged else ''}"
                     for epoch, flagged in best)


def duel_lines(table: DetailTable, group: str) -> list[list[str]]:
    later = table.attacks[1:]
    lines = []
    for duel in (d for d in table.duels if d.line.group == group):
        line = duel.line
        cells = []
        for column in COLUMNS:
            cells += [_epochs(duel.best_epochs[detail_metric(a, BEST_EPOCH, column)]) for a in table.attacks]
            for attack in later:
                metric = mse_metric(attack, column)
                cells.append(gain_text(metric, line.estimates.get(metric), len(line.seeds))
                             + (NOT_CONVERGED_MARK if line.not_converged.get(metric) else ""))
        lines.append([line.label, f"{line.sigma:g}", f"{line.cem_lambda:g}", str(len(line.seeds)), *cells])
    return lines


def rendered_detail(table: DetailTable) -> list[dict[str, Any]]:
    """Per group: one table per attack, the ξ table and, with several attacks, the head-to-head table, as text
    cells (``detail.md``, the HTML page and ``table1.json`` share them)."""
    rendered = []
    for group in table.groups:
        tables = [*({"title": f"{attack_title(a)} attack", "header": attack_header(a),
                     "rows": attack_lines(table, group, a)} for a in table.attacks),
                  {"title": "ξ", "header": XI_HEADER, "rows": xi_lines(table, group)}]
        if table.duels:
            tables.append({"title": "Head to head", "header": duel_header(table.attacks),
                           "rows": duel_lines(table, group)})
        rendered.append({"group": group, "tables": tables})
    return rendered


def render_detail_markdown(table: DetailTable, title: str) -> str:
    parts = [f"# {title}: beyond MSE", "", LEGEND]
    for group in rendered_detail(table):
        parts += ["", f"## {group['group']}"]
        for part in group["tables"]:
            parts += ["", f"### {part['title']}", "", " | ".join(part["header"]),
                      " | ".join("---" for _ in part["header"]), *(" | ".join(row) for row in part["rows"])]
    return "\n".join(parts) + "\n"


def detail_json(table: DetailTable) -> dict[str, Any]:
    return {
        "legend": LEGEND,
        "rendered": rendered_detail(table),
        "groups": [{"group": group,
                    "variants": [{"method": v.label, "row": v.row, "sigma": v.sigma, "cem_lambda": v.cem_lambda,
                                  "seeds": list(v.seeds), "metrics": estimates_json(v.estimates),
                                  "not_converged": dict(v.not_converged)}
                                 for v in table.lines if v.group == group],
                    "xi": [{"method": x.line.label, "row": x.line.row, "sigma": x.line.sigma,
                            "cem_lambda": x.line.cem_lambda, "seeds": list(x.line.seeds),
                            "xi": estimates_json(x.line.estimates),
                            "attacks_below": dict(x.below), "judged": dict(x.judged),
                            "judged_not_converged": dict(x.flagged)}
                           for x in table.xi if x.line.group == group],
                    "head_to_head": [{"method": d.line.label, "row": d.line.row, "sigma": d.line.sigma,
                                      "cem_lambda": d.line.cem_lambda, "seeds": list(d.line.seeds),
                                      "mse_change_percent": estimates_json(d.line.estimates),
                                      "not_converged": dict(d.line.not_converged),
                                      "zero_baseline": dict(d.zero_baseline),
                                      "best_epochs": {metric: [{"epoch": epoch, "not_converged": flagged}
                                                               for epoch, flagged in best]
                                                      for metric, best in d.best_epochs.items()}}
                                     for d in table.duels if d.line.group == group]}
                   for group in table.groups],
    }
