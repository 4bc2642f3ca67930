"""Table 1 written out: Markdown in the paper's layout, CSV with one number per cell, JSON with everything.

The layout is the paper's: per table group, each row without CEM then with CEM
(λ > 0 at the same σ), the row's paired CEM gain under it, and at the end the
"Average w/o CEM" / "Average w/ CEM" rows and the gain of the averages. Accuracy
in %, MSE as measured; "±" is the 95 % interval over seeds (none for one seed);
"†" marks an MSE for which at least one seed's attack did not converge (in an average row: any of the models
it averages).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cem.stats import Estimate
from experiment.records import COLUMNS
from experiment.report import ACCURACY, AverageBlock, GainLine, Table1, VariantLine, mse_metric

ATTACK_TITLES = {"decoder": "Dec.", "gan": "GAN", "optimize": "Opt.", "decoder+optimize": "Dec.+Opt."}
NOT_CONVERGED_MARK = " †"


def header(table: Table1) -> list[str]:
    return ["method", "σ", "λ", "seeds", "acc. %",
            *(f"{ATTACK_TITLES.get(a, a)} {c} MSE" for a in table.attacks for c in COLUMNS)]


def _value(metric: str, estimate: Estimate | None) -> str:
    if estimate is None:
        return "n/a"
    return estimate.format(".2f", 100.0) if metric == ACCURACY else estimate.format(".5f")


def _gain(metric: str, value: float | None, half_width: float | None = None) -> str:
    if value is None:
        return "n/a"
    unit, spec = (" pt", "+.2f") if metric == ACCURACY else (" %", "+.1f")
    interval = f" ± {half_width:{spec.lstrip('+')}}" if half_width is not None else ""
    return f"{value:{spec}}{interval}{unit}"


def _gain_estimate(metric: str, estimate: Estimate | None) -> str:
    if estimate is None:
        return "n/a"
    half = estimate.to_dict()["ci95"]
    return _gain(metric, estimate.mean, float(half) if half is not None else None)


def _variant_cells(table: Table1, line: VariantLine) -> list[str]:
    return [_value(m, line.estimates.get(m)) + (NOT_CONVERGED_MARK if line.not_converged.get(m) else "")
            for m in table.metrics]


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
                          str(len(gain.seeds)), *(_gain_estimate(m, gain.estimates.get(m)) for m in table.metrics)])
    for block in (b for b in table.averages if b.group == group):
        seeds = next((e.n for e in block.without_cem.values() if e is not None), 0)
        mark = {m: NOT_CONVERGED_MARK if block.not_converged.get(m) else "" for m in table.metrics}
        lines.append(["Average w/o CEM", "", "0", str(seeds),
                      *(_value(m, block.without_cem.get(m)) + mark[m] for m in table.metrics)])
        lines.append(["Average w/ CEM", "", f"{block.cem_lambda:g}", str(seeds),
                      *(_value(m, block.with_cem.get(m)) + mark[m] for m in table.metrics)])
        lines.append(["CEM gain of the averages", "", f"{block.cem_lambda:g}", "",
                      *(_gain(m, block.gain.get(m)) for m in table.metrics)])
    return lines


def render_markdown(table: Table1, title: str) -> str:
    legend = ("Mean ± 95 % interval (Student t) over seeds; MSE of each attack on the `train` and `infer` columns. "
              "CEM gain (paired): per seed against λ = 0 at the same σ, MSE in %, accuracy in points. "
              "Averages: over the rows with both variants (the paper's summary rows); their gain is the relative "
              f"change of the averages.{NOT_CONVERGED_MARK}: at least one seed's attack did not converge.")
    parts = [f"# {title}: Table 1", "", legend]
    for group in table.groups:
        head = header(table)
        rows = table_lines(table, group)
        parts += ["", f"## {group}", "", " | ".join(head), " | ".join("---" for _ in head)]
        parts += [" | ".join(f"**{c}**" if i == 0 and r[0].startswith(("Average", "CEM gain of")) else c
                             for i, c in enumerate(r)) for r in rows]
    return "\n".join(parts) + "\n"


def _numbers(prefix: str, metric: str, estimate: Estimate | None) -> dict[str, Any]:
    data = estimate.to_dict() if estimate is not None else {"mean": None, "ci95": None, "n": 0}
    return {f"{prefix}{metric}_mean": data["mean"], f"{prefix}{metric}_ci95": data["ci95"]}


def csv_records(table: Table1) -> list[dict[str, Any]]:
    """One record per table line: its kind, labels and, per metric, mean and interval half-width (empty: none)."""
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
        records.append(record)
    for b in table.averages:
        for line, values in (("average_without_cem", b.without_cem), ("average_with_cem", b.with_cem)):
            record = {"group": b.group, "line": line, "method": line.replace("_", " "), "row": "",
                      "sigma": "", "cem_lambda": 0.0 if line == "average_without_cem" else b.cem_lambda,
                      "seeds": next((e.n for e in values.values() if e is not None), 0)}
            for m in table.metrics:
                record.update(_numbers("", m, values.get(m)))
            records.append(record)
        record = {"group": b.group, "line": "average_gain", "method": "CEM gain of the averages", "row": "",
                  "sigma": "", "cem_lambda": b.cem_lambda, "seeds": ""}
        for m in table.metrics:
            record[f"{m}_mean"], record[f"{m}_ci95"] = b.gain.get(m), None
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


def _estimates(values: Mapping[str, Estimate | None]) -> dict[str, Any]:
    return {m: e.to_dict() if e is not None else None for m, e in values.items()}


def table_json(table: Table1, extra: Mapping[str, Any]) -> dict[str, Any]:
    def variant(v: VariantLine) -> dict[str, Any]:
        return {"row": v.row, "method": v.label, "sigma": v.sigma, "cem_lambda": v.cem_lambda, "seeds": list(v.seeds),
                "metrics": _estimates(v.estimates), "not_converged": dict(v.not_converged)}

    def gain(g: GainLine) -> dict[str, Any]:
        return {"row": g.row, "sigma": g.sigma, "cem_lambda": g.cem_lambda, "seeds": list(g.seeds),
                "metrics": _estimates(g.estimates), "units": {m: "points" if m == ACCURACY else "percent"
                                                               for m in g.estimates}}

    def average(b: AverageBlock) -> dict[str, Any]:
        return {"cem_lambda": b.cem_lambda, "pairs": [{"row": r, "sigma": s} for r, s in b.pairs],
                "without_cem": _estimates(b.without_cem), "with_cem": _estimates(b.with_cem),
                "gain": dict(b.gain), "gain_units": {m: "points" if m == ACCURACY else "percent" for m in b.gain},
                "not_converged": dict(b.not_converged)}

    return {
        **extra,
        "attacks": list(table.attacks),
        "columns": list(COLUMNS),
        "metrics": list(table.metrics),
        "mse_metrics": {a: {c: mse_metric(a, c) for c in COLUMNS} for a in table.attacks},
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
    paths["md"].write_text(render_markdown(table, title), encoding="utf-8")
    paths["csv"].write_text(render_csv(table), encoding="utf-8")
    paths["json"].write_text(json.dumps(table_json(table, extra), indent=2) + "\n", encoding="utf-8")
    return paths


def summary_line(table: Table1) -> Sequence[str]:
    """One line per average block, for the terminal."""
    return [f"{b.group}, λ={b.cem_lambda:g}: " + ", ".join(f"{m} {_gain(m, b.gain.get(m))}" for m in table.metrics)
            for b in table.averages]
