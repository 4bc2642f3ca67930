"""Audit jobs: submit, list, follow, cancel, and fetch the image and the report."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse

from attacker.service import audit_actions
from attacker.service.api.deps import CatalogDep, StoreDep
from attacker.service.api.schemas import (
    AttackTrainingByColumn,
    AuditAccepted,
    AuditCreate,
    AuditList,
    AuditView,
    ErrorBody,
    OpenApiResponses,
    PrivacyBound,
    WorstCaseByColumn,
)
from attacker.service.audit_actions import require_job, require_png, submit_audit
from attacker.service.jobs import AuditStatus, Job
from attacker.service.report import render_report
from cem.bounds import stored_bound

router = APIRouter(prefix="/v1/audits", tags=["audits"])

NOT_FOUND: OpenApiResponses = {404: {"model": ErrorBody, "description": "no audit with this id"}}
NOT_FINISHED: OpenApiResponses = {409: {"model": ErrorBody, "description": "the audit has not succeeded (yet)"}}


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _utc_or_none(timestamp: float | None) -> datetime | None:
    return _utc(timestamp) if timestamp is not None else None


def to_view(job: Job) -> AuditView:
    result = job.result or {}
    request = job.request
    bound = stored_bound(result.get("bound"))
    return AuditView(
        id=job.id,
        status=job.status,
        bundle=request.bundle,
        model_id=request.model_id,
        attack=request.attack,
        epochs=request.epochs,
        network_channels=request.network_channels,
        network_blocks=request.network_blocks,
        min_steps=request.min_steps,
        optimize_steps=request.optimize_steps,
        dataset=request.dataset,
        use_captures=request.use_captures,
        seed=request.seed,
        progress=job.progress,
        message=job.message,
        cancel_requested=job.cancel_requested,
        metrics=result.get("metrics"),
        bound=PrivacyBound.model_validate(bound) if bound is not None else None,
        training=_training(result.get("details")),
        worst_case=_worst_case(result.get("details")),
        captured_reconstructions=result.get("captured_reconstructions"),
        error=job.error,
        created_at=_utc(job.created_at),
        started_at=_utc_or_none(job.started_at),
        finished_at=_utc_or_none(job.finished_at),
    )


# what ``run_audit`` records per column that the view shows (not the curves)
TRAINING_KEYS = ("epochs", "best_epoch", "still_improving", "doubling_gain", "resumed_epochs", "pretraining_cached",
                 "attack_s", "eval_s", "optimize", "decoder_alone", "classifier_val_accuracy")


def _training(details: Any) -> AttackTrainingByColumn | None:
    """The attack's training per column from a stored result's details (absent in results older than the field)."""
    if not isinstance(details, dict):
        return None
    columns = {column: values for column in ("train", "infer")
               if isinstance(values := details.get(column), dict) and "best_epoch" in values}
    if not columns:
        return None
    return AttackTrainingByColumn.model_validate(
        {column: _column_training(values) for column, values in columns.items()}
    )


def _worst_case(details: Any) -> WorstCaseByColumn | None:
    """Per column, the strongest attack from a stored result's details (absent in results older than the field)."""
    worst = details.get("worst_case") if isinstance(details, dict) else None
    if not isinstance(worst, dict):
        return None
    return WorstCaseByColumn.model_validate(
        {column: worst[column] for column in ("train", "infer", "captured") if isinstance(worst.get(column), dict)}
    )


def _column_training(values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in TRAINING_KEYS if key in values}


@router.post(
    "",
    status_code=202,
    response_model=AuditAccepted,
    responses={404: {"model": ErrorBody, "description": "no bundle with this folder name or model id"}},
    summary="Queue an inversion audit of a bundle",
)
def create_audit(body: AuditCreate, store: StoreDep, catalog: CatalogDep, response: Response) -> AuditAccepted:
    job = submit_audit(store, catalog, body)
    response.headers["Location"] = f"{router.prefix}/{job.id}"
    return AuditAccepted(id=job.id, status=job.status)


@router.get("", response_model=AuditList, summary="Audits, newest first")
def list_audits(
    store: StoreDep,
    status: AuditStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    return AuditList(audits=[to_view(j) for j in store.list_jobs(status, limit)])


@router.get("/{audit_id}", response_model=AuditView, responses=NOT_FOUND, summary="Status, progress and results")
def get_audit(audit_id: str, store: StoreDep) -> AuditView:
    return to_view(require_job(store, audit_id))


@router.delete(
    "/{audit_id}",
    status_code=202,
    response_model=AuditAccepted,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "the audit already finished"}},
    summary="Cancel a queued or running audit",
)
def cancel_audit(audit_id: str, store: StoreDep) -> AuditAccepted:
    job = audit_actions.cancel_audit(store, audit_id)
    return AuditAccepted(id=job.id, status=job.status)


@router.get(
    "/{audit_id}/reconstructions.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND, **NOT_FINISHED},
    summary="The grid of originals above reconstructions",
)
def get_reconstructions(audit_id: str, store: StoreDep) -> Response:
    png = require_png(require_job(store, audit_id))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/{audit_id}/report",
    response_class=HTMLResponse,
    responses={**NOT_FOUND, **NOT_FINISHED},
    summary="A self-contained HTML report: metrics, bound and the image grid",
)
def get_report(audit_id: str, store: StoreDep) -> HTMLResponse:
    job = require_job(store, audit_id)
    png = require_png(job)
    return HTMLResponse(render_report(job, png), headers={"Cache-Control": "no-store"})
