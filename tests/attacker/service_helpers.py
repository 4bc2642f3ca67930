"""Start ``cem-audit`` as a real child process (``cem.processes``, its own session) and wait on its jobs
(imported by name from tests/attacker/**; the fixtures that use it are in tests/attacker/conftest.py)."""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from polling import wait_for

from cem.processes import ServiceProcess

TOKEN = "test-token-0123456789abcdef"
CAPTURED_SAMPLES = 12  # the conftest captures: digits test images 0..11, sample ids included
SUCCEEDED_AUDIT_NETWORK = {"channels": 8, "blocks": 1}  # the conftest's succeeded audit: a small attacker
# ... and its decoder's least steps: one epoch already takes more (digits: 67 and 28 steps), so it trains as without
SUCCEEDED_AUDIT_MIN_STEPS = 10


@dataclass
class AuditService:
    process: ServiceProcess  # in a session of its own: ``process.kill()`` also kills its workers
    db_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.process.address}"

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log(self) -> str:
        return self.process.log_text()

    def job_row(self, job_id: str) -> dict[str, Any]:
        """The job as stored in SQLite, read directly (works while the service is down)."""
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            return dict(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        finally:
            conn.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful), then SIGKILL whatever is left of the process group."""
        self.process.terminate(grace_s=timeout_s)


def start_service(db: Path, bundles: Path, captures: Path, log_path: Path, *extra: str,
                  token: str | None = TOKEN, timeout_s: float = 90.0) -> AuditService:
    env = {k: v for k, v in os.environ.items() if k != "CEM_AUDIT_TOKEN"}
    if token is not None:
        env["CEM_AUDIT_TOKEN"] = token
    argv = [sys.executable, "-m", "attacker.service.cli", "--port", "0", "--bundles", str(bundles),
            "--captures", str(captures), "--db", str(db), "--device", "cpu", "--log-level", "DEBUG", *extra]
    process = ServiceProcess.start(argv, log_path=log_path, name="cem-audit", env=env, new_session=True,
                                   timeout_s=timeout_s)
    return AuditService(process, db)


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 180.0,
                min_progress: float = 0.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        audit = client.get(f"/v1/audits/{job_id}").json()
        return audit if audit["status"] in statuses and audit["progress"] >= min_progress else None

    return wait_for(reached, timeout_s, f"audit {job_id} to reach {sorted(statuses)}", interval_s=0.2)
