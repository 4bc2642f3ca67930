"""The experiments pages: the reports ``cem-experiment report`` wrote, read straight from their files.

``cem-audit --experiments DIR`` names a folder of ``cem-experiment run`` output
folders; each one holding ``report/table1.json`` is listed. The ``experiment``
package is not imported (the apps meet only in the kernel), so this module reads
what the report wrote: ``report/table1.json`` (Table 1, its flags and the cells
missing), ``experiment.json`` (the plan: cell counts and the spec) and the figures
``report/*.png``/``*.svg``. The report writes Table 1 into its JSON already laid
out, cell for cell as ``table1.md`` shows it, and its figures with their titles
(``rendered`` and ``figures``), so no formatting is repeated here; a report
written before those fields existed is refused with the command that rewrites it.

Names in a request (an experiment, a figure) are only ever looked up in a listing
of a folder, never joined onto a path: nothing outside ``DIR/<name>/report`` is
served, nor a hidden file, a symlink or anything but a PNG or SVG.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from attacker.service.api.deps import get_settings
from attacker.service.console.web import PREFIX, ConsolePage, ConsoleRoute
from attacker.service.errors import ExperimentNotFoundError, FigureNotFoundError, ReportUnreadableError

logger = logging.getLogger(__name__)
router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

REPORT_DIR = "report"
TABLE_FILE = "table1.json"
PLAN_FILE = "experiment.json"
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")  # reports written by a version that recorded more still read


class RenderedRow(_Record):
    kind: str  # "variant", "gain" (paired) or "average": the CSS class of its <tr>
    cells: list[str]


class RenderedGroup(_Record):
    group: str
    header: list[str]
    rows: list[RenderedRow]
    notes: list[str] = []


class Rendered(_Record):
    """Table 1 as ``table1.md`` shows it, cell for cell (``experiment.tables.rendered_groups``)."""

    legend: str
    groups: list[RenderedGroup]
    notes: list[str] = []


class DetailTable(_Record):
    title: str
    header: list[str]
    rows: list[list[str]]


class DetailGroup(_Record):
    group: str
    tables: list[DetailTable]


class DetailRecord(_Record):
    """The tables beside Table 1 (PSNR, SSIM, attack accuracy, ξ, attacks head to head) as ``detail.md`` shows them
    (``experiment.detail.detail_json``)."""

    legend: str
    rendered: list[DetailGroup]


class FigureRecord(_Record):
    kind: str  # "plot" or "gallery"
    title: str
    files: list[str]  # the PNG first, then the SVG


class TableRecord(_Record):
    """``table1.json`` (``experiment.tables.table_json``) as far as the console shows it."""

    name: str | None = None
    rendered: Rendered
    detail: DetailRecord | None = None  # reports written before it lack it
    figures: list[FigureRecord] = []
    convergence: list[dict[str, Any]] = []
    unjudged: list[dict[str, Any]] = []
    nonfinite: list[dict[str, Any]] = []
    missing: list[str] = []
    observations: int | None = None
    planned: int | None = None  # the cells the report laid out (``report --attacks``: fewer than the plan's)


@dataclass(frozen=True)
class Experiment:
    name: str  # folder name under --experiments
    path: Path

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR


@dataclass(frozen=True)
class Figure:
    title: str
    image: str  # the file the page shows (the PNG where there is one)
    other: str | None = None  # the same figure in the other format


@dataclass(frozen=True)
class Summary:
    """One experiment as the list shows it; ``error`` set when its table1.json is unreadable."""

    experiment: Experiment
    title: str = ""
    observations: int | None = None
    missing: int = 0
    not_converged: int = 0
    nonfinite: int = 0
    planned: int | None = None
    written_at: float | None = None
    error: str | None = None
    figures: int = 0  # distinct figures (a PNG and its SVG count once)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_experiments(root: Path) -> list[Experiment]:
    """The visible sub-folders of ``root`` that hold ``report/table1.json``, by name."""
    found = []
    for path in sorted(root.iterdir()):
        try:
            if _visible(path) and path.is_dir() and (path / REPORT_DIR / TABLE_FILE).is_file():
                found.append(Experiment(path.name, path))
        except OSError as exc:  # a folder we may not look into
            logger.debug("not listing %s as an experiment: %s", path.name, exc)
    return found


def find_experiment(root: Path | None, name: str) -> Experiment:
    """The listed experiment whose folder name is ``name`` exactly; ``ExperimentNotFoundError`` otherwise."""
    for experiment in list_experiments(root) if root is not None else []:
        if experiment.name == name:
            return experiment
    raise ExperimentNotFoundError()


def list_figures(report_dir: Path) -> dict[str, Path]:
    """The report folder's PNG and SVG files by file name: regular files only (no symlink), none hidden."""
    return {path.name: path for path in sorted(report_dir.iterdir())
            if _visible(path) and path.suffix in IMAGE_TYPES and path.is_file() and not path.is_symlink()}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_table(experiment: Experiment) -> TableRecord:
    try:
        return TableRecord.model_validate(_read_json(experiment.report_dir / TABLE_FILE))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        logger.warning("experiment %s: unreadable %s: %s", experiment.name, TABLE_FILE, exc)
        raise ReportUnreadableError() from None


def read_plan(experiment: Experiment) -> Mapping[str, Any]:
    """The run's ``experiment.json``, or {} where it is missing or unreadable (the table stands without it)."""
    try:
        plan = _read_json(experiment.path / PLAN_FILE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return plan if isinstance(plan, dict) else {}


def planned_cells(plan: Mapping[str, Any]) -> int | None:
    """Distinct train cells (grid points may share a key) plus attack cells of the plan; None without a plan."""
    train, attack = plan.get("train"), plan.get("attack")
    if not isinstance(train, list) or not isinstance(attack, list):
        return None
    return len({c.get("key") for c in train if isinstance(c, dict)}) + len(attack)


def summarize(experiment: Experiment, table: TableRecord | None = None,
              plan: Mapping[str, Any] | None = None) -> Summary:
    """The list's line for one experiment (``table`` and ``plan``: already read, else read here)."""
    if table is None:
        try:
            table = read_table(experiment)
        except ReportUnreadableError as exc:
            return Summary(experiment, title=experiment.name, error=exc.detail)
    written_at = (experiment.report_dir / TABLE_FILE).stat().st_mtime
    plots, galleries = figures(table, list_figures(experiment.report_dir))
    return Summary(experiment, title=table.name or experiment.name, observations=table.observations,
                   missing=len(table.missing), not_converged=len(table.convergence), nonfinite=len(table.nonfinite),
                   planned=table.planned if table.planned is not None
                   else planned_cells(read_plan(experiment) if plan is None else plan), written_at=written_at,
                   figures=len(plots) + len(galleries))


def figures(table: TableRecord, present: Mapping[str, Path]) -> tuple[list[Figure], list[Figure]]:
    """(plots, galleries) the report lists, each shown as its first file that is in the report folder."""
    plots: list[Figure] = []
    galleries: list[Figure] = []
    for record in table.figures:
        files = [name for name in record.files if name in present]
        if not files:
            continue
        figure = Figure(record.title, files[0], files[1] if len(files) > 1 else None)
        (galleries if record.kind == "gallery" else plots).append(figure)
    return plots, galleries


def _root(page: ConsolePage) -> Path | None:
    settings = get_settings(page.request)
    return settings.experiments_dir


@router.get("/experiments")
def experiments_page(page: ConsolePage) -> HTMLResponse:
    root = _root(page)
    summaries = [summarize(e) for e in list_experiments(root)] if root is not None else []
    return page.render("experiments.html", title="Experiments", enabled=root is not None,
                       experiments_dir=str(root) if root is not None else None, summaries=summaries)


@router.get("/experiments/{name}")
def experiment_page(page: ConsolePage, name: str) -> HTMLResponse:
    experiment = find_experiment(_root(page), name)
    table = read_table(experiment)
    plan = read_plan(experiment)
    plots, galleries = figures(table, list_figures(experiment.report_dir))
    return page.render(
        "experiment.html", title=table.name or experiment.name, experiment=experiment, table=table,
        groups=table.rendered.groups, summary=summarize(experiment, table, plan), plots=plots, galleries=galleries,
        spec_text=plan.get("spec_text") if isinstance(plan.get("spec_text"), str) else None,
    )


@router.get("/experiments/{name}/plots/{file}")
def experiment_figure(page: ConsolePage, name: str, file: str) -> FileResponse:
    """A PNG or SVG of the experiment's report folder, found by exact name in the folder's listing."""
    experiment = find_experiment(_root(page), name)
    if "/" in file or "\\" in file or ".." in file or not file or file.startswith("."):
        raise FigureNotFoundError()
    path = list_figures(experiment.report_dir).get(file)
    if path is None:
        raise FigureNotFoundError()
    return FileResponse(path, media_type=IMAGE_TYPES[path.suffix])
