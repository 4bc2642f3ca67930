"""FastAPI dependencies: the objects the lifespan built, and the bearer-token guard."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from attacker.service.bundles import BundleCatalog
from attacker.service.config import ServiceSettings
from attacker.service.errors import UnauthorizedError
from attacker.service.jobs import JobStore
from attacker.service.supervisor import WorkerPool
from cem.captures.reader import CaptureStore

bearer_scheme = HTTPBearer(auto_error=False, description="the token in CEM_AUDIT_TOKEN")


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_pool(request: Request) -> WorkerPool | None:
    return request.app.state.pool


def get_catalog(settings: Annotated[ServiceSettings, Depends(get_settings)]) -> BundleCatalog:
    return BundleCatalog(settings.bundles_dir)


def get_captures(settings: Annotated[ServiceSettings, Depends(get_settings)]) -> CaptureStore:
    return CaptureStore(settings.captures_dir)


def require_token(
    settings: Annotated[ServiceSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """401 unless ``Authorization: Bearer <CEM_AUDIT_TOKEN>``; compared in constant time."""
    if settings.token is None:  # --insecure-no-auth
        return
    presented = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(presented.encode(), settings.token.encode()):
        raise UnauthorizedError()


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
PoolDep = Annotated[WorkerPool | None, Depends(get_pool)]
CatalogDep = Annotated[BundleCatalog, Depends(get_catalog)]
CapturesDep = Annotated[CaptureStore, Depends(get_captures)]
