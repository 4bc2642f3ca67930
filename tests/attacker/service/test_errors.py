"""Every error type has a deliberate HTTP status; an unexpected failure is a logged JSON 500, over real HTTP."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from error_types import all_cem_errors, make_error, qualified_name
from polling import wait_for
from service_helpers import TOKEN

from attacker.service.app import create_app
from attacker.service.config import ServiceSettings
from attacker.service.errors import (
    DETAIL_AUDIT_FINISHED,
    DETAIL_AUDIT_NOT_FINISHED,
    DETAIL_AUDIT_NOT_FOUND,
    DETAIL_BUNDLE_NOT_FOUND,
    DETAIL_CAPTURES_UNREADABLE,
    DETAIL_EXPERIMENT_NOT_FOUND,
    DETAIL_FIGURE_NOT_FOUND,
    DETAIL_NOT_READY,
    DETAIL_REPORT_UNREADABLE,
    DETAIL_UNAUTHORIZED,
    AuditFinishedError,
    AuditNotFinishedError,
    AuditNotFoundError,
    BundleNotFoundHTTPError,
    CapturesUnreadableError,
    ExperimentNotFoundError,
    FigureNotFoundError,
    NotReadyError,
    ReportUnreadableError,
    ServiceError,
    UnauthorizedError,
    to_service_error,
)
from cem.errors import CaptureStoreError, CEMError

# The errors a route raises on purpose, with what the client sees: never the exception's own message.
ROUTE_STATUS = {
    UnauthorizedError: (401, DETAIL_UNAUTHORIZED),
    BundleNotFoundHTTPError: (404, DETAIL_BUNDLE_NOT_FOUND),
    AuditNotFoundError: (404, DETAIL_AUDIT_NOT_FOUND),
    AuditNotFinishedError: (409, DETAIL_AUDIT_NOT_FINISHED),
    AuditFinishedError: (409, DETAIL_AUDIT_FINISHED),
    CapturesUnreadableError: (503, DETAIL_CAPTURES_UNREADABLE),
    NotReadyError: (503, DETAIL_NOT_READY),
    ExperimentNotFoundError: (404, DETAIL_EXPERIMENT_NOT_FOUND),
    FigureNotFoundError: (404, DETAIL_FIGURE_NOT_FOUND),
    ReportUnreadableError: (503, DETAIL_REPORT_UNREADABLE),
    CaptureStoreError: (503, DETAIL_CAPTURES_UNREADABLE),  # the /v1/captures route reads the store
}
INTERNAL = (500, "internal error")


@pytest.mark.parametrize("error_type", all_cem_errors(), ids=qualified_name)
def test_every_cem_error_maps_to_a_deliberate_status(error_type: type[CEMError]) -> None:
    """The service's own errors each declare their status; other errors no route raises are a 500."""
    error = to_service_error(make_error(error_type, "expected X, got /private/path"))
    if issubclass(error_type, ServiceError) and error_type is not ServiceError:
        assert "status_code" in vars(error_type) and "detail" in vars(error_type), "declare both, not inherit them"
    assert (error.status_code, error.detail) == ROUTE_STATUS.get(error_type, INTERNAL)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServiceSettings, str]]:
    """The real app under uvicorn in this process (no workers), port 0, logging as ``cem-audit`` sets it up."""
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    settings = ServiceSettings(bundles_dir=bundles, captures_dir=tmp_path / "captures", db_path=tmp_path / "audit.db",
                               token=TOKEN, port=0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, start_workers=False), host="127.0.0.1", port=0,
                                           log_config=None, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 60, "uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield settings, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_an_unusable_job_database_is_a_logged_json_500(
    served: tuple[ServiceSettings, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings, url = served
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        assert http.get("/v1/audits").json() == {"audits": []}
        for path in settings.db_path.parent.glob(settings.db_path.name + "*"):  # the database, its WAL and index
            path.unlink()
        settings.db_path.mkdir()  # SQLite cannot open a directory: every job-store call now fails
        with caplog.at_level(logging.INFO):
            for path in ("/v1/audits", "/v1/audits/feedface"):
                response = http.get(path)
                assert response.status_code == 500
                assert response.headers["content-type"] == "application/json"
                assert response.json() == {"detail": "internal error"}
        assert http.get("/healthz").json() == {"status": "ok"}  # the service keeps serving
    logged = [record for record in caplog.records if record.exc_info]
    assert [(r.name, r.getMessage(), type(r.exc_info[1])) for r in logged] == [
        ("attacker.service.errors", f"GET {path} -> 500: unexpected error", sqlite3.OperationalError)
        for path in ("/v1/audits", "/v1/audits/feedface")
    ]  # once each, with the traceback; the server does not log it again
    assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)
