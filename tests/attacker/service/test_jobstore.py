"""The SQLite job store on its own: claims, leases, cancellation and restart recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attacker.attack_names import AttackName
from attacker.service.jobs import INTERRUPTED_ERROR, AuditStatus, JobRequest, JobStore


def request(**overrides: object) -> JobRequest:
    fields = {"bundle": "b", "model_id": "m", "bundle_dir": "/b", "attack": AttackName.DECODER, "epochs": 1,
              "dataset": None, "use_captures": True}
    return JobRequest(**{**fields, **overrides})  # type: ignore[arg-type]


def test_statuses_and_attacks_read_as_their_values() -> None:
    """They end up in JSON, SQL, log lines, query strings and file names: always as the bare value."""
    for member in (AuditStatus.SUCCEEDED, AttackName.GAN):
        assert str(member) == f"{member}" == "%s" % member == member.value  # noqa: UP031 - %-formatting is under test
        assert json.dumps({member: member}) == json.dumps({member.value: member.value})


def test_claims_are_fifo_and_exclusive(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    first, second = store.create(request()), store.create(request(attack=AttackName.GAN))
    claimed = store.claim_next(worker_pid=11)
    assert claimed is not None and claimed.id == first.id and claimed.attempts == 1
    assert claimed.status is AuditStatus.RUNNING and claimed.request.attack is AttackName.DECODER
    claimed = store.claim_next(worker_pid=12)
    assert claimed is not None and claimed.id == second.id and claimed.request.attack is AttackName.GAN
    assert store.claim_next(worker_pid=13) is None
    assert store.count_jobs(AuditStatus.RUNNING) == 2 and store.list_jobs()[0].id == second.id  # newest first


def test_writes_need_the_current_lease(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.create(request())
    claimed = store.claim_next(worker_pid=1)
    assert store.update_progress(job.id, claimed.lease, 0.5, "halfway")
    assert not store.update_progress(job.id, "stale-lease", 0.9, "no")
    assert not store.finish(job.id, "stale-lease", AuditStatus.SUCCEEDED, result={"metrics": {}})
    result = {"metrics": {"train": {"mse": 0.1}}}
    assert store.finish(job.id, claimed.lease, AuditStatus.SUCCEEDED, result=result, png_path="/p.png")
    done = store.get(job.id)
    assert (done.status, done.progress, done.result, done.lease) == (AuditStatus.SUCCEEDED, 1.0, result, None)
    assert not store.finish(job.id, claimed.lease, AuditStatus.FAILED, error="late")  # finished is final
    with pytest.raises(ValueError, match="expected a final status or 'queued', got 'running'"):
        store.finish(job.id, claimed.lease, AuditStatus.RUNNING)


def test_cancel_queued_at_once_and_running_via_the_worker(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    running, queued = store.create(request()), store.create(request())
    lease = store.claim_next(worker_pid=1).lease
    assert store.request_cancel(queued.id).status is AuditStatus.CANCELLED
    flagged = store.request_cancel(running.id)
    assert flagged.status is AuditStatus.RUNNING and flagged.cancel_requested
    assert store.should_stop(running.id, lease)
    assert store.finish(running.id, lease, AuditStatus.CANCELLED)
    assert store.request_cancel("missing") is None


@pytest.mark.parametrize(
    ("policy", "status"), [("interrupt", AuditStatus.INTERRUPTED), ("requeue", AuditStatus.QUEUED)]
)
def test_recovery_never_leaves_a_job_running(tmp_path: Path, policy: str, status: AuditStatus) -> None:
    store = JobStore(tmp_path / "jobs.db")
    mine, other, cancelling = store.create(request()), store.create(request()), store.create(request())
    old_lease = store.claim_next(worker_pid=7).lease
    store.claim_next(worker_pid=8)
    store.claim_next(worker_pid=9)
    store.request_cancel(cancelling.id)
    assert store.recover_running(policy, worker_pid=7) == [mine.id]  # one dead worker's job only
    assert store.get(other.id).status is AuditStatus.RUNNING
    assert sorted(store.recover_running(policy)) == sorted([other.id, cancelling.id])  # start-up: all of them
    assert store.get(cancelling.id).status is AuditStatus.CANCELLED  # a requested cancel wins over requeue
    recovered = store.get(mine.id)
    assert recovered.status is status and recovered.lease is None
    assert recovered.error == (INTERRUPTED_ERROR if policy == "interrupt" else None)
    assert not store.finish(mine.id, old_lease, AuditStatus.SUCCEEDED)  # the old worker cannot overwrite it
    if policy == "requeue":
        assert store.claim_next(worker_pid=10).attempts == 2
