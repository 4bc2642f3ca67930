"""The audits pages: the list with the start form, one audit with its verdict and results, and their actions.

Submitting and cancelling go through ``attacker.service.audit_actions``, as the
REST API's do, so a form and an API call cannot disagree. The view models are
built here (``audit_row``, ``audit_detail``); the templates only format them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from attacker.attack_names import ATTACKS, OPTIMIZING_ATTACKS, AttackName
from attacker.service.api.deps import get_catalog, get_settings, get_store
from attacker.service.api.routes.audits import to_view
from attacker.service.api.schemas import (
    MAX_EPOCHS,
    MAX_MIN_STEPS,
    MAX_NETWORK_BLOCKS,
    MAX_NETWORK_CHANNELS,
    MAX_OPTIMIZE_STEPS,
    AuditCreate,
    AuditView,
)
from attacker.service.audit_actions import cancel_audit, require_job, require_png, submit_audit
from attacker.service.console.verdict import Verdict, verdict
from attacker.service.console.web import PREFIX, ConsolePage, ConsoleRoute, check_form
from attacker.service.jobs import FINAL_STATUSES, AuditStatus, Job
from attacker.service.report import SPLITS, render_report, strongest_note

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

LIST_LIMIT = 200
GRID_SAMPLES = 8  # = attacker.attacks.evaluate.GRID_SAMPLES (not imported: it needs torch; checked by a test)
# the start form's number fields: name -> (label, min, max); empty means the attack's default
NUMBER_FIELDS: dict[str, tuple[str, int, int]] = {
    "epochs": ("Epochs", 1, MAX_EPOCHS),
    "network_channels": ("Network channels", 1, MAX_NETWORK_CHANNELS),
    "network_blocks": ("Network blocks", 0, MAX_NETWORK_BLOCKS),
    "min_steps": ("Least decoder steps", 0, MAX_MIN_STEPS),
    "optimize_steps": ("Optimisation steps", 1, MAX_OPTIMIZE_STEPS),
    "seed": ("Seed", 0, 2**31 - 1),
}
NumberField = Annotated[str, Form(max_length=32)]


def audit_url(audit_id: str, suffix: str = "") -> str:
    return f"{PREFIX}/audits/{audit_id}{suffix}"


def verdict_of(view: AuditView) -> Verdict:
    """The verdict on a succeeded audit, on each column's strongest attack (the hybrid's decoder alone included)."""
    decoder_alone = {column: getattr(view.training, column).decoder_alone
                     for column in ("train", "infer") if view.training and getattr(view.training, column)}
    alternatives = {AttackName.DECODER.value: decoder_alone} if view.attack is AttackName.HYBRID else {}
    return verdict(view.metrics, view.worst_case, alternatives, attack=str(view.attack))


def _details(job: Job) -> dict[str, Any]:
    details = (job.result or {}).get("details")
    return details if isinstance(details, dict) else {}


def gallery_alt(view: AuditView) -> str:
    """What the reconstruction grid shows (``attacker.attacks.grid``): blocks of columns side by side, the originals
    in the top row above the attack's reconstructions in the bottom row."""
    blocks = []
    for column, label in SPLITS[:2]:
        scores = getattr(view.metrics, column) if view.metrics else None
        if scores is not None and scores.n > 0:
            blocks.append(f"{min(GRID_SAMPLES, scores.n)} images of the {label}")
    captured = view.captured_reconstructions or 0
    if captured:
        blocks.append(f"the first {min(GRID_SAMPLES, captured)} of the {captured} captured samples reconstructed "
                      "(an original without a known ground truth is a grey tile)")
    return (f"Reconstruction grid of the {view.attack} attack on {view.bundle}: top row the original images, bottom "
            f"row their reconstructions; left to right, {'; then '.join(blocks) or 'no images'}.")


def headline_metric(view: AuditView, judged: Verdict | None) -> dict[str, Any] | None:
    """The list's one number: the inference column's strongest attack (else the first column judged)."""
    if judged is None or not judged.evidence:
        return None
    by_column = {e.column: e for e in judged.evidence}
    evidence = by_column.get("infer", judged.evidence[0])
    return {"column": evidence.column, "attack": evidence.attack or str(view.attack), "mse": evidence.mse,
            "psnr": evidence.psnr}


def audit_row(job: Job) -> dict[str, Any]:
    """One row of the audits table."""
    view = to_view(job)
    judged = verdict_of(view) if job.status is AuditStatus.SUCCEEDED else None
    return {"audit": view, "final": job.finished, "verdict": judged, "headline": headline_metric(view, judged)}


def audit_detail(job: Job) -> dict[str, Any]:
    """Everything the audit page shows; the results only for a succeeded audit."""
    view = to_view(job)
    context: dict[str, Any] = {
        "audit": view, "final": job.finished, "optimizing": view.attack in OPTIMIZING_ATTACKS,
        "hybrid": view.attack is AttackName.HYBRID, "splits": SPLITS, "network": _details(job).get("network"),
        "min_steps": _details(job).get("min_steps"),  # what the audit used (absent in older results)
    }
    if job.status is AuditStatus.SUCCEEDED:
        context.update(
            verdict=verdict_of(view), strongest_note=strongest_note(str(view.attack), _details(job)),
            gallery_alt=gallery_alt(view),
            training_columns=[(column, label, getattr(view.training, column)) for column, label in SPLITS[:2]
                              if view.training is not None and getattr(view.training, column) is not None],
        )
    return context


def _optional_int(name: str, value: str) -> int | None:
    text = value.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("form", name), "msg": f"expected a whole number, got {text[:32]!r}", "type": "int_parsing"}]
        ) from None


def audit_create(bundle: str, attack: str, numbers: dict[str, str], use_captures: bool) -> AuditCreate:
    """The form as the API's strict request body: "" is the default, anything else must parse as a number."""
    values: dict[str, Any] = {name: _optional_int(name, text) for name, text in numbers.items()}
    if values.get("seed") is None:
        values.pop("seed", None)  # the schema's default seed (0)
    return AuditCreate.model_validate(
        {"bundle": bundle, "attack": attack or AttackName.DECODER.value, "use_captures": use_captures, **values}
    )


@router.get("/audits")
def list_audits(page: ConsolePage, status: str = "",
                bundle: Annotated[str, Query(max_length=200)] = "") -> HTMLResponse:
    wanted = None
    if status:
        try:
            wanted = AuditStatus(status)
        except ValueError:
            raise RequestValidationError([{"loc": ("query", "status"), "type": "enum", "msg": (
                f"expected one of {', '.join(s.value for s in AuditStatus)}, got {status[:32]!r}")}]) from None
    jobs = get_store(page.request).list_jobs(wanted, LIST_LIMIT, bundle=bundle or None)
    return page.render(
        "audits.html", title="Audits", rows=[audit_row(job) for job in jobs], status_filter=status,
        bundle_filter=bundle,
        statuses=[s.value for s in AuditStatus], bundles=get_catalog(get_settings(page.request)).list_bundles(),
        attacks=ATTACKS, number_fields=NUMBER_FIELDS, limit=LIST_LIMIT,
    )


@router.post("/audits")
def start_audit(
    page: ConsolePage,
    csrf_token: Annotated[str, Form(max_length=128)] = "",
    bundle: Annotated[str, Form(max_length=200)] = "",
    attack: Annotated[str, Form(max_length=64)] = "",
    epochs: NumberField = "",
    network_channels: NumberField = "",
    network_blocks: NumberField = "",
    min_steps: NumberField = "",
    optimize_steps: NumberField = "",
    seed: NumberField = "",
    use_captures: Annotated[str, Form(max_length=8)] = "",
) -> RedirectResponse:
    check_form(page, csrf_token)
    numbers = {"epochs": epochs, "network_channels": network_channels, "network_blocks": network_blocks,
               "min_steps": min_steps, "optimize_steps": optimize_steps, "seed": seed}
    body = audit_create(bundle, attack, numbers, use_captures=bool(use_captures))
    job = submit_audit(get_store(page.request), get_catalog(get_settings(page.request)), body)
    return RedirectResponse(audit_url(job.id), status_code=303)


@router.get("/audits/{audit_id}/status")
def audit_status(page: ConsolePage, audit_id: str) -> JSONResponse:
    """What console.js polls: the status, progress and message of one audit."""
    job = require_job(get_store(page.request), audit_id)
    return JSONResponse({"id": job.id, "status": job.status.value, "progress": job.progress, "message": job.message})


@router.get("/audits/{audit_id}")
def audit_page(page: ConsolePage, audit_id: str) -> HTMLResponse:
    job = require_job(get_store(page.request), audit_id)
    return page.render("audit.html", title=f"Audit {job.id[:8]}", final_statuses=FINAL_STATUSES,
                       **audit_detail(job))


@router.post("/audits/{audit_id}/cancel")
def cancel(page: ConsolePage, audit_id: str,
           csrf_token: Annotated[str, Form(max_length=128)] = "") -> RedirectResponse:
    check_form(page, csrf_token)
    job = cancel_audit(get_store(page.request), audit_id)
    return RedirectResponse(audit_url(job.id), status_code=303)


@router.get("/audits/{audit_id}/reconstructions.png")
def reconstructions(page: ConsolePage, audit_id: str) -> Response:
    return Response(require_png(require_job(get_store(page.request), audit_id)), media_type="image/png")


def _report_policy(report: str) -> str:
    """The report's own CSP: its one inline stylesheet (by hash) and its inlined PNG; nothing else, no scripts."""
    match = re.search(r"<style>(.*?)</style>", report, re.DOTALL)
    style = ""
    if match is not None:
        digest = base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode()
        style = f"style-src 'sha256-{digest}'; "
    return f"default-src 'none'; {style}img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


@router.get("/audits/{audit_id}/report")
def report(page: ConsolePage, audit_id: str) -> HTMLResponse:
    """The API's self-contained report behind the console's session, to read or save as one file."""
    job = require_job(get_store(page.request), audit_id)
    html = render_report(job, require_png(job))
    return HTMLResponse(html, headers={
        "Content-Security-Policy": _report_policy(html),
        "Content-Disposition": f'inline; filename="cem-audit-{job.id}.html"',
    })
