"""Liveness (no auth) and readiness (auth: it reveals the queue)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from attacker.service.api.deps import PoolDep, StoreDep, require_token
from attacker.service.api.schemas import ErrorBody, Health, Readiness
from attacker.service.errors import NotReadyError
from attacker.service.jobs import AuditStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up (no authentication)")
def get_health() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    dependencies=[Depends(require_token)],
    responses={503: {"model": ErrorBody}, 401: {"model": ErrorBody}},
    summary="Ready to run audits: the job store answers and a worker is alive",
)
def get_readiness(store: StoreDep, pool: PoolDep) -> Readiness:
    workers = pool.alive() if pool is not None else 0
    if workers == 0:
        raise NotReadyError()
    return Readiness(
        status="ready",
        workers=workers,
        queued=store.count_jobs(AuditStatus.QUEUED),
        running=store.count_jobs(AuditStatus.RUNNING),
    )
