"""Start ``cem-audit`` as a real child process (its own process group) and wait on its jobs."""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from cem.wire import parse_listening_line

TOKEN = "test-token-0123456789abcdef"
CAPTURED_SAMPLES = 12  # the conftest captures: digits test images 0..11, sample ids included


@dataclass
class AuditService:
    process: subprocess.Popen
    url: str
    log_path: Path
    db_path: Path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.process.pid)
        self.process.wait(10)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_service(db: Path, bundles: Path, captures: Path, log_path: Path, *extra: str,
                  token: str | None = TOKEN, timeout_s: float = 90.0) -> AuditService:
    env = {k: v for k, v in os.environ.items() if k != "CEM_AUDIT_TOKEN"}
    if token is not None:
        env["CEM_AUDIT_TOKEN"] = token
    argv = [sys.executable, "-m", "attacker.service.cli", "--port", "0", "--bundles", str(bundles),
            "--captures", str(captures), "--db", str(db), "--device", "cpu", "--log-level", "DEBUG", *extra]
    with open(log_path, "a") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                                   env=env, start_new_session=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.5):
                parsed = parse_listening_line(process.stdout.readline())
                if parsed is not None:
                    return AuditService(process, f"http://{parsed[0]}:{parsed[1]}", log_path, db)
    finally:
        selector.close()
    kill_group(process.pid)
    raise AssertionError(f"cem-audit did not print LISTENING; log:\n{log_path.read_text()}")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 180.0,
                min_progress: float = 0.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        audit = client.get(f"/v1/audits/{job_id}").json()
        return audit if audit["status"] in statuses and audit["progress"] >= min_progress else None

    return wait_for(reached, timeout_s, f"audit {job_id} to reach {sorted(statuses)}")
