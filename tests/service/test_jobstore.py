"""The SQLite job store on its own: claims, leases, cancellation and restart recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacker.service.jobs import INTERRUPTED_ERROR, JobRequest, JobStore


def request(**overrides: object) -> JobRequest:
    fields = {"bundle": "b", "model_id": "m", "bundle_dir": "/b", "attack": "decoder", "epochs": 1,
              "dataset": None, "use_captures": True}
    return JobRequest(**{**fields, **overrides})  # type: ignore[arg-type]


def test_claims_are_fifo_and_exclusive(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    first, second = store.create(request()), store.create(request(attack="gan"))
    claimed = store.claim_next(worker_pid=11)
    assert claimed is not None and claimed.id == first.id and claimed.status == "running" and claimed.attempts == 1
    assert store.claim_next(worker_pid=12).id == second.id
    assert store.claim_next(worker_pid=13) is None
    assert store.count_jobs("running") == 2 and store.list_jobs()[0].id == second.id  # newest first


def test_writes_need_the_current_lease(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.create(request())
    claimed = store.claim_next(worker_pid=1)
    assert store.update_progress(job.id, claimed.lease, 0.5, "halfway")
    assert not store.update_progress(job.id, "stale-lease", 0.9, "no")
    assert not store.finish(job.id, "stale-lease", "succeeded", result={"metrics": {}})
    assert store.finish(job.id, claimed.lease, "succeeded", result={"metrics": {"train": {"mse": 0.1}}}, png_path="/p.png")
    done = store.get(job.id)
    assert (done.status, done.progress, done.result, done.lease) == ("succeeded", 1.0, {"metrics": {"train": {"mse": 0.1}}}, None)
    assert not store.finish(job.id, claimed.lease, "failed", error="late")  # finished is final
    with pytest.raises(ValueError, match="expected a final status or 'queued', got 'running'"):
        store.finish(job.id, claimed.lease, "running")


def test_cancel_queued_at_once_and_running_via_the_worker(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    running, queued = store.create(request()), store.create(request())
    lease = store.claim_next(worker_pid=1).lease
    assert store.request_cancel(queued.id).status == "cancelled"
    flagged = store.request_cancel(running.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert store.should_stop(running.id, lease)
    assert store.finish(running.id, lease, "cancelled")
    assert store.request_cancel("missing") is None


@pytest.mark.parametrize(("policy", "status"), [("interrupt", "interrupted"), ("requeue", "queued")])
def test_recovery_never_leaves_a_job_running(tmp_path: Path, policy: str, status: str) -> None:
    store = JobStore(tmp_path / "jobs.db")
    mine, other, cancelling = store.create(request()), store.create(request()), store.create(request())
    old_lease = store.claim_next(worker_pid=7).lease
    store.claim_next(worker_pid=8)
    store.claim_next(worker_pid=9)
    store.request_cancel(cancelling.id)
    assert store.recover_running(policy, worker_pid=7) == [mine.id]  # one dead worker's job only
    assert store.get(other.id).status == "running"
    assert sorted(store.recover_running(policy)) == sorted([other.id, cancelling.id])  # start-up: all of them
    assert store.get(cancelling.id).status == "cancelled"  # a requested cancel wins over requeue
    recovered = store.get(mine.id)
    assert recovered.status == status and recovered.lease is None
    assert recovered.error == (INTERRUPTED_ERROR if policy == "interrupt" else None)
    assert not store.finish(mine.id, old_lease, "succeeded")  # the old worker cannot overwrite it
    if policy == "requeue":
        assert store.claim_next(worker_pid=10).attempts == 2
