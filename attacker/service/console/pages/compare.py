"""Audits side by side: settings, each column's strongest-attack scores with their change against the first audit,
the verdicts, and the reconstruction grids next to each other.

Deltas are read from the defender's side: a higher MSE, a lower PSNR, SSIM or
attack accuracy is *more private* (``delta-better``); every delta also says so in
words, never by colour alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from attacker.service.api.deps import get_catalog, get_settings, get_store
from attacker.service.api.routes.audits import to_view
from attacker.service.api.schemas import AuditView
from attacker.service.audit_actions import require_job
from attacker.service.bundles import BundleEntry
from attacker.service.console.pages.audits import verdict_of
from attacker.service.console.verdict import Evidence, Verdict
from attacker.service.console.web import PREFIX, ConsolePage, ConsoleRoute
from attacker.service.jobs import AuditStatus, Job
from attacker.service.report import SPLITS

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

MIN_AUDITS, MAX_AUDITS = 2, 8
# (key, label, privacy grows with the value): only MSE does; PSNR, SSIM and attack accuracy shrink with privacy
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("mse", "MSE", True), ("psnr", "PSNR (dB)", False), ("ssim", "SSIM", False),
    ("attack_accuracy", "Attack accuracy", False),
)


@dataclass(frozen=True)
class Delta:
    text: str  # "+12.3 %", "-1.20 dB", "+4.0 pp"
    css: str  # delta-better, delta-worse or delta-same
    marker: str  # the same in words: more private, less private, same


@dataclass(frozen=True)
class Setting:
    value: str
    source: str  # where it was read: the audit's result, the bundle, or why it is missing


@dataclass(frozen=True)
class Compared:
    """One audit's column of the comparison."""

    audit: AuditView
    verdict: Verdict | None  # None: the audit has not succeeded, so it has no numbers
    sigma: Setting
    lam: Setting
    scores: dict[str, Evidence]


def delta(metric: str, base: float | None, value: float | None) -> Delta | None:
    """``value`` against ``base`` (the first audit's): MSE as a relative change, the others as differences."""
    if base is None or value is None:
        return None
    grows_with_privacy = next(up for key, _, up in METRICS if key == metric)
    if metric == "mse":
        if base <= 0:
            return None
        change = (value - base) / base
        text = f"{100 * change:+.1f} %"
    else:
        change = value - base
        text = {"psnr": f"{change:+.2f} dB", "attack_accuracy": f"{100 * change:+.1f} pp"}.get(metric, f"{change:+.3f}")
    if change == 0 or not math.isfinite(change):
        return Delta(text, "delta-same", "same")
    better = (change > 0) == grows_with_privacy
    return Delta(text, "delta-better" if better else "delta-worse", "more private" if better else "less private")


def _entry_for(job: Job, entries: dict[str, BundleEntry]) -> BundleEntry | None:
    """The audited bundle as it is now, when it still holds the audited model."""
    entry = entries.get(job.request.bundle)
    return entry if entry is not None and entry.manifest.model_id == job.request.model_id else None


def defense_settings(job: Job, entry: BundleEntry | None) -> tuple[Setting, Setting]:
    """σ (the noise the audit saw, else the bundle's) and CEM's λ (the bundle's manifest; results do not record it)."""
    details = (job.result or {}).get("details")
    recorded = details.get("noise_std") if isinstance(details, dict) else None
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        sigma = Setting(f"{recorded:g}", "recorded by the audit")
    elif entry is not None:
        sigma = Setting(f"{entry.manifest.noise_std:g}", "from the bundle's manifest")
    else:
        sigma = Setting("–", "not recorded; the bundle is gone or holds another model")
    if entry is None:
        lam = Setting("–", "the bundle is gone or holds another model")
    elif entry.manifest.cem is None:
        lam = Setting("none", "the bundle records no CEM training")
    else:
        lam = Setting(f"{entry.manifest.cem.lam:g}", f"from the bundle's manifest ({entry.manifest.cem.units})")
    return sigma, lam


def compared(job: Job, entries: dict[str, BundleEntry]) -> Compared:
    view = to_view(job)
    judged = verdict_of(view) if job.status is AuditStatus.SUCCEEDED else None
    sigma, lam = defense_settings(job, _entry_for(job, entries))
    scores = {e.column: e for e in judged.evidence} if judged is not None else {}
    return Compared(view, judged, sigma, lam, scores)


def comparison_rows(columns: list[Compared]) -> list[dict[str, Any]]:
    """Per scored column and metric: each audit's value and its delta against the first; rows nobody has are left
    out (captures carry no labels, so no attack accuracy)."""
    rows = []
    for column, label in SPLITS:
        for key, metric_label, _ in METRICS:
            values = [getattr(c.scores[column], key) if column in c.scores else None for c in columns]
            if all(v is None for v in values):
                continue
            cells = [{"value": v, "delta": delta(key, values[0], v) if i else None} for i, v in enumerate(values)]
            rows.append({"column": column, "label": label, "metric": key, "metric_label": metric_label,
                         "cells": cells})
    return rows


def _chosen(ids: list[str]) -> list[str]:
    unique = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not MIN_AUDITS <= len(unique) <= MAX_AUDITS:
        raise RequestValidationError([{"loc": ("query", "ids"), "type": "value_error", "msg": (
            f"expected {MIN_AUDITS} to {MAX_AUDITS} different audits to compare (tick them in the audits list), "
            f"got {len(unique)}")}])
    return unique


@router.get("/compare")
def compare(page: ConsolePage, ids: Annotated[list[str] | None, Query()] = None) -> HTMLResponse:
    chosen = _chosen(ids or [])
    store = get_store(page.request)
    jobs = [require_job(store, audit_id) for audit_id in chosen]
    entries = {entry.name: entry for entry in get_catalog(get_settings(page.request)).list_bundles()}
    columns = [compared(job, entries) for job in jobs]
    return page.render("compare.html", title="Compare audits", columns=columns, rows=comparison_rows(columns),
                       first_succeeded=columns[0].verdict is not None)
