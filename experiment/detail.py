"""Beside Table 1: the attacks' PSNR, SSIM and attack accuracy, and each model's two ξ against what was achieved.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cem.stats import Estimate
from experiment.records import COLUMNS, DETAIL_STATS, XI_METRICS, detail_metric, xi_metric
from experiment.report import Observation, VariantLine, grouped_by_variant, mse_metric, seed_estimate
from experiment.tables import NOT_CONVERGED_MARK, attack_title, count_suffix, estimates_json

STAT_TITLES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "attack_accuracy": "attack acc. %"}
LEGEND = ("Mean ± 95 % interval (Student t) over seeds, per attack and column (`train`, `infer`); attack acc.: the "
          "share of reconstructions the attacker's classifier labels correctly (identity leakage). "
          f"{NOT_CONVERGED_MARK.strip()}: at least one model's attack behind the value did not converge. ξ: per model, "
          "the estimate (H(x) from a Gaussian fit) and the relative ξ (H(x) := 0); neither is a proven floor, and "
          "'attacks below' counts the models on which an attack reconstructed below it.")


@dataclass(frozen=True)
class XiLine:
    """One variant's ξ of each kind over its seeds (``line.estimates``, by kind), on how many of its models (of
    ``judged``) an attack went below it, and how many of those judged had an attack that did not converge."""

    line: VariantLine
    below: Mapping[str, int]
    judged: Mapping[str, int]
    flagged: Mapping[str, int]


@dataclass(frozen=True)
class DetailTable:
    """The lines of every group, in Table 1's order: per attack metrics (``lines``) and the ξ lines."""

    attacks: tuple[str, ...]
    groups: tuple[str, ...]
    lines: tuple[VariantLine, ...]  # estimates keyed by ``detail_metric``
    xi: tuple[XiLine, ...]


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
    return DetailTable(tuple(attacks), groups, tuple(lines), tuple(xi))


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


def rendered_detail(table: DetailTable) -> list[dict[str, Any]]:
    """Per group: one table per attack and the ξ table, as text cells (``detail.md``, the HTML page and
    ``table1.json`` share them)."""
    return [{"group": group,
             "tables": [*({"title": f"{attack_title(a)} attack", "header": attack_header(a),
                           "rows": attack_lines(table, group, a)} for a in table.attacks),
                        {"title": "ξ", "header": XI_HEADER, "rows": xi_lines(table, group)}]}
            for group in table.groups]


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
                           for x in table.xi if x.line.group == group]}
                   for group in table.groups],
    }
