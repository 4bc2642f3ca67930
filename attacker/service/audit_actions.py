"""Submitting and cancelling audits: one home for what the REST API and the console both do.

Each function raises the service's domain errors (``attacker.service.errors``),
which every boundary maps once: the API answers them as JSON, the console as a
page.
"""

from __future__ import annotations

from pathlib import Path

from attacker.service.api.schemas import AuditCreate
from attacker.service.bundles import BundleCatalog
from attacker.service.errors import (
    AuditFinishedError,
    AuditNotFinishedError,
    AuditNotFoundError,
    BundleNotFoundHTTPError,
)
from attacker.service.jobs import AuditStatus, Job, JobRequest, JobStore


def submit_audit(store: JobStore, catalog: BundleCatalog, body: AuditCreate) -> Job:
    """Queue the audit ``body`` asks for; 404 when its bundle (folder name or model id) is unknown."""
    entry = catalog.resolve(body.bundle)
    if entry is None:
        raise BundleNotFoundHTTPError()
    return store.create(
        JobRequest(
            bundle=entry.name,
            model_id=entry.manifest.model_id,
            bundle_dir=str(entry.path.resolve()),
            attack=body.attack,
            epochs=body.epochs,
            network_channels=body.network_channels,
            network_blocks=body.network_blocks,
            optimize_steps=body.optimize_steps,
            min_steps=body.min_steps,
            dataset=body.dataset,
            use_captures=body.use_captures,
            seed=body.seed,
        )
    )


def require_job(store: JobStore, audit_id: str) -> Job:
    job = store.get(audit_id)
    if job is None:
        raise AuditNotFoundError()
    return job


def cancel_audit(store: JobStore, audit_id: str) -> Job:
    """Cancel a queued audit, or ask a running one to stop; 409 when it already finished."""
    require_job(store, audit_id)
    job = store.request_cancel(audit_id)
    if job is None:
        raise AuditNotFoundError()
    if job.status is not AuditStatus.CANCELLED and not (job.status is AuditStatus.RUNNING and job.cancel_requested):
        raise AuditFinishedError()
    return job


def require_png(job: Job) -> bytes:
    """The reconstruction grid of a succeeded audit; 409 for any other."""
    if job.status is not AuditStatus.SUCCEEDED or not job.png_path or not Path(job.png_path).is_file():
        raise AuditNotFinishedError()
    return Path(job.png_path).read_bytes()
