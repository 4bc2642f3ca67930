"""Jobs persist across a SIGKILL of the service; nothing is left "running" forever; workers die with their service.

The requeue policy is covered on the job store itself (test_jobstore.py); one end-to-end restart is enough here.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from polling import wait_for
from service_helpers import start_service, wait_status

from attacker.service.jobs import INTERRUPTED_ERROR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # cem-audit and its workers, killed and restarted


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not yet reaped) counts as gone
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_sigkill_and_restart(bundles_dir: Path, captures_dir: Path, tmp_path: Path) -> None:
    db, log = tmp_path / "audit.db", tmp_path / "service.log"
    first = start_service(db, bundles_dir, captures_dir, log)
    try:
        with first.client() as http:
            body = {"bundle": "digits-tiny", "epochs": 500, "use_captures": False}
            running_id = http.post("/v1/audits", json=body).json()["id"]
            queued_id = http.post("/v1/audits", json=body).json()["id"]
            wait_status(http, running_id, {"running"})
        first.process.kill()  # its whole process group, service and worker at once: nobody can tidy up
    finally:
        first.process.kill()
    assert first.job_row(running_id)["status"] == "running"  # stale on disk until the next start

    second = start_service(db, bundles_dir, captures_dir, log)
    try:
        with second.client() as http:
            interrupted = http.get(f"/v1/audits/{running_id}").json()
            assert interrupted["status"] == "interrupted" and interrupted["error"] == INTERRUPTED_ERROR
            assert {a["id"] for a in http.get("/v1/audits").json()["audits"]} == {running_id, queued_id}
            wait_status(http, queued_id, {"running"})  # the queued job survived and now runs
            worker_pid = second.job_row(queued_id)["worker_pid"]
        second.process.send_signal(signal.SIGKILL)  # only the service: its worker must not outlive it
        second.process.wait(10)
        wait_for(lambda: not _alive(worker_pid), 30, f"worker {worker_pid} to exit after its service died")
        assert second.job_row(queued_id)["status"] == "interrupted"  # the worker gave its job back on the way out
    finally:
        second.process.kill()

