"""Table 1 written out: Markdown in the paper's layout, CSV with one number per cell, JSON with everything.

The layout is the paper's: per table group, each row without CEM then with CEM
(λ > 0 at the same σ), the row's paired CEM gain under it, and at the end the
"Average w/o CEM" / "Average w/ CEM" rows and the gain of the averages. Accuracy
in %, MSE as measured; "±" is the 95 % interval over seeds (none for one seed);
"(n=k)" after a value says it stands on k models where the line's "seeds" says
otherwise (a missing attack cell, a value left out as not finite). "†" marks a
value for which at least one model's attack did not converge: on a variant line
its seeds, on a gain line or in an average block any model behind it, of either
variant, because a non-converged attack on either side can make or break a gain.
The CSV and JSON give the count (``<metric>_not_converged``). With several
attacks the "Strongest" columns follow the attacks' (``experiment.report``,
``STRONGEST``). Under each table: the paper's headline (the gain of the
averages, meaned over the attacks), which attack was the strongest how often,
and the seeds a paired gain left out; at the end, values left out as not finite
and columns whose convergence was not judged.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cem.stats import Estimate
from experiment.records import COLUMNS
from experiment.report import (
    ACCURACY,
    STRONGEST,
    AverageBlock,
    GainLine,
    Table1,
    VariantLine,
    mse_metric,
    scored_attacks,
)
from experiment.revision import mixed_note

ATTACK_TITLES = {"decoder": "Dec.", "gan": "GAN", "optimize": "Opt.", "decoder+optimize": "Dec.+Opt.",
                 STRONGEST: "Strongest"}
NOT_CONVERGED_MARK = " †"
LEGEND = ("Mean ± 95 % interval (Student t) over seeds; MSE of each attack on the `train` and `infer` columns; "
          "(n=k): the value stands on k models. "
          "CEM gain (paired): per seed against λ = 0 at the same σ, MSE in %, accuracy in points. "
          "Averages: over the rows with both variants (the paper's summary rows); their gain is the relative "
          f"change of the averages, per attack. Strongest (with several attacks): per model and column the lowest "
          f"MSE of the attacks run.{NOT_CONVERGED_MARK}: at least one model's attack behind the "
          "value did not converge (on a gain: of either variant).")


def attack_title(attack: str) -> str:
    """An attack's short title; a tie of attacks (``"decoder=gan"``, ``Table1.strongest``) as "Dec. = GAN"."""
    return " = ".join(ATTACK_TITLES.get(a, a) for a in attack.split("="))


def header(table: Table1) -> list[str]:
    return ["method", "σ", "λ", "seeds", "acc. %",
            *(f"{attack_title(a)} {c} MSE" for a in scored_attacks(table.attacks) for c in COLUMNS)]


def _mark(count: int | None) -> str:
    return NOT_CONVERGED_MARK if count else ""


def count_suffix(estimate: Estimate | None, seeds: int) -> str:
    """The " (n=k)" suffix of a value that stands on another number of models than its line's "seeds" column
    says (a missing attack cell, a value left out as not finite): a mean over fewer models is less sure."""
    return f" (n={estimate.n})" if estimate is not None and estimate.n != seeds else ""


def _value(metric: str, estimate: Estimate | None, seeds: int | None = None) -> str:
    if estimate is None:
        return "n/a"
    text = estimate.format(".2f", 100.0) if metric == ACCURACY else estimate.format(".5f")
    return text + (count_suffix(estimate, seeds) if seeds is not None else "")


def _gain(metric: str, value: float | None, half_width: float | None = None) -> str:
    if value is None:
        return "n/a"
    unit, spec = (" pt", "+.2f") if metric == ACCURACY else (" %", "+.1f")
    interval = f" ± {half_width:{spec.lstrip('+')}}" if half_width is not None else ""
    return f"{value:{spec}}{interval}{unit}"


def gain_text(metric: str, estimate: Estimate | None, seeds: int | None = None) -> str:
    """A paired change as Table 1 prints it ("+12.3 ± 4.5 %", accuracy in points), " (n=k)" where it stands on
    another number of models than ``seeds``."""
    if estimate is None:
        return "n/a"
    half = estimate.to_dict()["ci95"]
    return _gain(metric, estimate.mean, float(half) if half is not None else None) + (
        count_suffix(estimate, seeds) if seeds is not None else "")


def _variant_cells(table: Table1, line: VariantLine) -> list[str]:
    return [_value(m, line.estimates.get(m), len(line.seeds)) + _mark(line.not_converged.get(m))
            for m in table.metrics]


def _block_seeds(values: Mapping[str, Estimate | None]) -> int:
    """An average row's "seeds": the most models any of its values stands on (accuracy's, as a rule)."""
    return max((e.n for e in values.values() if e is not None), default=0)


def table_lines(table: Table1, group: str) -> list[list[str]]:
    """The body rows of one group's table, as text cells (Markdown and the HTML page share them)."""
    lines = []
    gains = {(g.row, g.sigma, g.cem_lambda): g for g in table.gains if g.group == group}
    for line in (v for v in table.variants if v.group == group):
        lines.append([line.label, f"{line.sigma:g}", f"{line.cem_lambda:g}", str(len(line.seeds)),
                      *_variant_cells(table, line)])
        gain = gains.get((line.row, line.sigma, line.cem_lambda))
        if gain is not None:
            lines.append([f"CEM gain, {line.row} (paired)", f"{gain.sigma:g}", f"{gain.cem_lambda:g}",
                          str(len(gain.seeds)),
                          *(gain_text(m, gain.estimates.get(m), len(gain.seeds)) + _mark(gain.not_converged.get(m))
                            for m in table.metrics)])
    for block in (b for b in table.averages if b.group == group):
        seeds = _block_seeds(block.without_cem)
        mark = {m: _mark(block.not_converged.get(m)) for m in table.metrics}
        lines.append(["Average w/o CEM", "", "0", str(seeds),
                      *(_value(m, block.without_cem.get(m), seeds) + mark[m] for m in table.metrics)])
        lines.append(["Average w/ CEM", "", f"{block.cem_lambda:g}", str(seeds),
                      *(_value(m, block.with_cem.get(m), seeds) + mark[m] for m in table.metrics)])
        lines.append(["CEM gain of the averages", "", f"{block.cem_lambda:g}", "",
                      *(_gain(m, block.gain.get(m)) + mark[m] for m in table.metrics)])
    return lines


def row_kind(first_cell: str) -> str:
    """A body row's kind from its first cell: "variant", "gain" (paired) or "average" (the summary rows)."""
    if first_cell.startswith(("Average", "CEM gain of")):
        return "average"
    return "gain" if first_cell.startswith("CEM gain") else "variant"


def rendered_groups(table: Table1) -> list[dict[str, Any]]:
    """Per group: its header, its rows as text cells with their kind, and its notes, exactly as ``table1.md``
    shows them; the HTML page and ``table1.json`` (for readers that must not import this package, such as the
    audit console) carry the same cells."""
    return [{"group": group, "header": header(table),
             "rows": [{"kind": row_kind(cells[0]), "cells": cells} for cells in table_lines(table, group)],
             "notes": table_notes(table, group)}
            for group in table.groups]


def _seed_counts(table: Table1, block: AverageBlock, column: str) -> str:
    """" (seeds: Dec. 3, GAN 1)" where the attacks' averages of ``column`` stand on different numbers of seeds, as
    in a grid whose slower attack is partly stored: their mean, the headline, then mixes models; else ""."""
    counts = {}
    for attack in table.attacks:
        estimate = block.without_cem.get(mse_metric(attack, column))
        counts[attack] = estimate.n if estimate is not None else 0
    if len(set(counts.values())) < 2:
        return ""
    return " (seeds: " + ", ".join(f"{attack_title(a)} {n}" for a, n in counts.items()) + ")"


def _headline(table: Table1, block: AverageBlock) -> str:
    parts = [f"{column} {_gain('mse', block.attack_mean_gain.get(column))}"
             f"{_mark(block.attack_mean_not_converged.get(column))}{_seed_counts(table, block, column)}"
             for column in COLUMNS]
    return f"λ={block.cem_lambda:g}: " + ", ".join(parts)


def table_notes(table: Table1, group: str) -> list[str]:
    """The sentences under one group's table (Markdown and the HTML page share them): the paper's headline gain
    (with several attacks) and the paired gains' seeds left out for a zero λ = 0 MSE."""
    notes = []
    if len(table.attacks) > 1:
        notes += [f"CEM gain of the averages, mean over the attacks (the paper's headline), {_headline(table, b)}"
                  for b in table.averages if b.group == group]
        wins = table.strongest.get(group, {})
        if wins:
            notes.append("Strongest attack, on how many models: " + "; ".join(
                f"{column} " + ", ".join(f"{attack_title(a)} {n}" for a, n in sorted(wins[column].items()))
                for column in COLUMNS if column in wins))
    for gain in (g for g in table.gains if g.group == group):
        for metric, dropped in gain.zero_baseline.items():
            if dropped:
                notes.append(f"CEM gain, {gain.row} σ={gain.sigma:g} λ={gain.cem_lambda:g}: {dropped} seed(s) left "
                             f"out of {metric} (their λ = 0 MSE is 0, so there is no relative change)")
    return notes


def flag_notes(nonfinite: Sequence[Mapping[str, Any]], unjudged: Sequence[Mapping[str, Any]],
               revisions: Mapping[str, int] | None = None) -> list[str]:
    """The report-wide notes: each value left out as not finite, the count of unjudged attack columns, and the code
    revisions behind the cells when they are not one clean recorded revision (``experiment.revision``)."""
    notes = [f"non-finite {'MSE' if n.get('attack') else n['metric']} ({n['value']}), left out: "
             f"{n['group']} | {n['row']} σ={n['sigma']:g} λ={n['cem_lambda']:g} seed {n['seed']}"
             + (f" / {n['attack']} / {n['column']}" if n.get("attack") else "") for n in nonfinite]
    if unjudged:
        notes.append(f"{len(unjudged)} attack column(s) had no validation images, so their convergence was not "
                     "judged (table1.json 'unjudged')")
    mixed = mixed_note(revisions or {})
    if mixed:
        notes.append(mixed)
    return notes


def render_markdown(table: Table1, title: str, nonfinite: Sequence[Mapping[str, Any]] = (),
                    unjudged: Sequence[Mapping[str, Any]] = (), revisions: Mapping[str, int] | None = None) -> str:
    parts = [f"# {title}: Table 1", "", LEGEND]
    for group in table.groups:
        head = header(table)
        rows = table_lines(table, group)
        parts += ["", f"## {group}", "", " | ".join(head), " | ".join("---" for _ in head)]
        parts += [" | ".join(f"**{c}**" if i == 0 and r[0].startswith(("Average", "CEM gain of")) else c
                             for i, c in enumerate(r)) for r in rows]
        notes = table_notes(table, group)
        if notes:
            parts += ["", *(f"* {note}" for note in notes)]
    flags = flag_notes(nonfinite, unjudged, revisions)
    if flags:
        parts += ["", "## Notes", "", *(f"* {note}" for note in flags)]
    return "\n".join(parts) + "\n"


def _numbers(prefix: str, metric: str, estimate: Estimate | None) -> dict[str, Any]:
    data = estimate.to_dict() if estimate is not None else {"mean": None, "ci95": None, "n": 0}
    return {f"{prefix}{metric}_mean": data["mean"], f"{prefix}{metric}_ci95": data["ci95"],
            f"{prefix}{metric}_n": data["n"]}


def csv_records(table: Table1) -> list[dict[str, Any]]:
    """One record per table line: its kind, labels and, per metric, mean, interval half-width (empty: none), the
    models it stands on and how many of those had an attack that did not converge."""
    records: list[dict[str, Any]] = []
    for v in table.variants:
        record = {"group": v.group, "line": "variant", "method": v.label, "row": v.row, "sigma": v.sigma,
                  "cem_lambda": v.cem_lambda, "seeds": len(v.seeds)}
        for m in table.metrics:
            record.update(_numbers("", m, v.estimates.get(m)))
            record[f"{m}_not_converged"] = v.not_converged.get(m, 0)
        records.append(record)
    for g in table.gains:
        record = {"group": g.group, "line": "paired_gain", "method": f"CEM gain, {g.row}", "row": g.row,
                  "sigma": g.sigma, "cem_lambda": g.cem_lambda, "seeds": len(g.seeds)}
        for m in table.metrics:
            record.update(_numbers("", m, g.estimates.get(m)))
            record[f"{m}_not_converged"] = g.not_converged.get(m, 0)
            record[f"{m}_zero_baseline"] = g.zero_baseline.get(m, 0)
        records.append(record)
    for b in table.averages:
        for line, values in (("average_without_cem", b.without_cem), ("average_with_cem", b.with_cem)):
            record = {"group": b.group, "line": line, "method": line.replace("_", " "), "row": "",
                      "sigma": "", "cem_lambda": 0.0 if line == "average_without_cem" else b.cem_lambda,
                      "seeds": _block_seeds(values)}
            for m in table.metrics:
                record.update(_numbers("", m, values.get(m)))
                record[f"{m}_not_converged"] = b.not_converged.get(m, 0)
            records.append(record)
        record = {"group": b.group, "line": "average_gain", "method": "CEM gain of the averages", "row": "",
                  "sigma": "", "cem_lambda": b.cem_lambda, "seeds": ""}
        for m in table.metrics:
            record[f"{m}_mean"], record[f"{m}_ci95"] = b.gain.get(m), None
            record[f"{m}_not_converged"] = b.not_converged.get(m, 0)
        records.append(record)
        record = {"group": b.group, "line": "average_gain_mean_over_attacks",
                  "method": "CEM gain of the averages, mean over the attacks", "row": "", "sigma": "",
                  "cem_lambda": b.cem_lambda, "seeds": ""}
        for column in COLUMNS:
            record[f"mse_{column}_mean"] = b.attack_mean_gain.get(column)
            record[f"mse_{column}_not_converged"] = b.attack_mean_not_converged.get(column, 0)
        records.append(record)
    return records


def render_csv(table: Table1) -> str:
    records = csv_records(table)
    fields = list(dict.fromkeys(k for r in records for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return out.getvalue()


def estimates_json(values: Mapping[str, Estimate | None]) -> dict[str, Any]:
    return {m: e.to_dict() if e is not None else None for m, e in values.items()}


def table_json(table: Table1, extra: Mapping[str, Any]) -> dict[str, Any]:
    def variant(v: VariantLine) -> dict[str, Any]:
        return {"row": v.row, "method": v.label, "sigma": v.sigma, "cem_lambda": v.cem_lambda, "seeds": list(v.seeds),
                "metrics": estimates_json(v.estimates), "not_converged": dict(v.not_converged)}

    def gain(g: GainLine) -> dict[str, Any]:
        return {"row": g.row, "sigma": g.sigma, "cem_lambda": g.cem_lambda, "seeds": list(g.seeds),
                "metrics": estimates_json(g.estimates), "units": {m: "points" if m == ACCURACY else "percent"
                                                               for m in g.estimates},
                "not_converged": dict(g.not_converged), "zero_baseline": dict(g.zero_baseline)}

    def average(b: AverageBlock) -> dict[str, Any]:
        return {"cem_lambda": b.cem_lambda, "pairs": [{"row": r, "sigma": s} for r, s in b.pairs],
                "without_cem": estimates_json(b.without_cem), "with_cem": estimates_json(b.with_cem),
                "gain": dict(b.gain), "gain_units": {m: "points" if m == ACCURACY else "percent" for m in b.gain},
                "not_converged": dict(b.not_converged),
                "attack_mean_gain": dict(b.attack_mean_gain),  # percent, per column: the paper's headline
                "attack_mean_not_converged": dict(b.attack_mean_not_converged)}

    return {
        **extra,
        "rendered": {"legend": LEGEND, "groups": rendered_groups(table),
                     "notes": flag_notes(extra.get("nonfinite", ()), extra.get("unjudged", ()),
                                            extra.get("code_revisions"))},
        "attacks": list(table.attacks),
        "columns": list(COLUMNS),
        "metrics": list(table.metrics),
        "mse_metrics": {a: {c: mse_metric(a, c) for c in COLUMNS} for a in scored_attacks(table.attacks)},
        "strongest_wins": {group: {column: dict(counts) for column, counts in wins.items()}
                           for group, wins in table.strongest.items()},
        "groups": [{"group": group,
                    "variants": [variant(v) for v in table.variants if v.group == group],
                    "paired_gains": [gain(g) for g in table.gains if g.group == group],
                    "averages": [average(b) for b in table.averages if b.group == group]}
                   for group in table.groups],
    }


def write_tables(table: Table1, directory: Path, title: str, extra: Mapping[str, Any]) -> dict[str, Path]:
    """``table1.md``, ``table1.csv`` and ``table1.json`` in ``directory``; their paths by format."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"md": directory / "table1.md", "csv": directory / "table1.csv", "json": directory / "table1.json"}
    texts = {"md": render_markdown(table, title, extra.get("nonfinite", ()), extra.get("unjudged", ()),
                                   extra.get("code_revisions")),
             "csv": render_csv(table), "json": json.dumps(table_json(table, extra), indent=2) + "\n"}
    for kind, path in paths.items():
        _write_atomically(path, texts[kind])
    return paths


def _write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a reader (the audit console) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def summary_line(table: Table1) -> Sequence[str]:
    """One line per average block, for the terminal: each gain with the count of models behind it whose attack
    did not converge, and with several attacks the mean over them (the paper's headline)."""

    def flagged(count: int | None) -> str:
        return f" ({count} not converged{NOT_CONVERGED_MARK})" if count else ""

    lines = []
    for b in table.averages:
        line = f"{b.group}, λ={b.cem_lambda:g}: " + ", ".join(
            f"{m} {_gain(m, b.gain.get(m))}{flagged(b.not_converged.get(m))}" for m in table.metrics)
        if len(table.attacks) > 1:
            line += "; mean over the attacks: " + ", ".join(
                f"{column} {_gain('mse', b.attack_mean_gain.get(column))}"
                f"{flagged(b.attack_mean_not_converged.get(column))}{_seed_counts(table, b, column)}"
                for column in COLUMNS)
        lines.append(line)
    return lines
