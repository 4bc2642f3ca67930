"""The report as one self-contained HTML page: the tables, the figures and galleries inlined as data URIs.

One file that works alone (mail it, open it from an archive): every image is
embedded as a base64 ``data:image/png`` URI, nothing is fetched. The page is the
Jinja2 template ``templates/report.html`` (package data), autoescaped, so labels
and notes from the spec cannot inject markup.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from experiment.cost import CellCost
from experiment.report import Table1
from experiment.revision import mixed_note, short
from experiment.tables import LEGEND, flag_notes, rendered_groups

TEMPLATE = "report.html"


def data_uri(path: Path) -> str:
    """``path`` (a PNG) as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(*, name: str, table: Table1, figures: Sequence[tuple[str, Path]],
                galleries: Sequence[tuple[str, Path]], flags: Sequence[Mapping[str, Any]], missing: Sequence[str],
                stored: int, spec_text: str, unjudged: Sequence[Mapping[str, Any]] = (),
                nonfinite: Sequence[Mapping[str, Any]] = (), costs: Sequence[CellCost] = (),
                detail: Mapping[str, Any] | None = None, revisions: Mapping[str, int] | None = None) -> str:
    """The page; ``figures`` and ``galleries`` are (title, PNG path) pairs; ``flags``, ``unjudged`` and
    ``nonfinite`` the report's not-converged columns, unjudged columns and values left out as not finite;
    ``costs`` what each kind of stored cell took (experiment.cost); ``detail`` the tables beside Table 1
    (``experiment.detail.detail_json``); ``revisions`` the stored cells per code revision (``experiment.revision``)."""
    environment = Environment(loader=PackageLoader("experiment", "templates"), autoescape=select_autoescape(["html"]))
    return environment.get_template(TEMPLATE).render(
        name=name,
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        stored=stored,
        tables=rendered_groups(table),
        legend=LEGEND,  # table1.md's legend, one text for both
        figures=[{"title": title, "uri": data_uri(path)} for title, path in figures],
        galleries=[{"title": title, "uri": data_uri(path)} for title, path in galleries],
        flags=list(flags),
        unjudged=list(unjudged),
        nonfinite=flag_notes(nonfinite, ()),  # the same sentences as table1.md's notes
        missing=list(missing),
        costs=list(costs),
        revisions=[(short(revision), cells) for revision, cells in (revisions or {}).items()],
        mixed_revisions=mixed_note(revisions or {}),
        detail=detail,
        spec_text=spec_text,
    )


def write_html(path: Path, page: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
