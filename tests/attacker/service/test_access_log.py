"""``--no-access-log``: no line per request (the compose stack's report polls its audits every second)."""

from __future__ import annotations

from pathlib import Path

import pytest
from polling import wait_for
from service_helpers import AuditService, start_service

pytestmark = [pytest.mark.e2e]  # one more cem-audit process


def test_without_the_access_log_requests_leave_no_line_but_the_default_logs_each(
    service: AuditService, bundles_dir: Path, captures_dir: Path, tmp_path: Path
) -> None:
    quiet = start_service(tmp_path / "audit.db", bundles_dir, captures_dir, tmp_path / "service.log", "--no-access-log")
    try:
        for running in (quiet, service):
            with running.client() as http:
                assert http.get("/healthz").status_code == 200
        wait_for(lambda: '"GET /healthz HTTP/1.1" 200' in service.log() or None, 30, "the default's access line")
        assert "GET /healthz" not in quiet.log() and "uvicorn.access" not in quiet.log()
    finally:
        quiet.stop()
