"""The SQLite job store on its own: claims, leases, cancellation and restart recovery."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from attacker.attack_names import AttackName
from attacker.service.jobs import INTERRUPTED_ERROR, AuditStatus, JobRequest, JobStore

# The ``jobs`` table as databases created before the attack-network columns hold it (typed out, not derived).
OLD_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, bundle TEXT NOT NULL, model_id TEXT NOT NULL,
    bundle_dir TEXT NOT NULL, attack TEXT NOT NULL, epochs INTEGER, dataset TEXT, use_captures INTEGER NOT NULL,
    seed INTEGER NOT NULL, progress REAL NOT NULL DEFAULT 0, message TEXT, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER, lease TEXT, result TEXT, png_path TEXT, error TEXT
);
CREATE INDEX jobs_by_status ON jobs(status, created_at);
"""
# ... and as those created with the attack-network columns but before ``optimize_steps``.
NETWORK_SCHEMA = OLD_SCHEMA.replace("epochs INTEGER,",
                                    "epochs INTEGER, network_channels INTEGER, network_blocks INTEGER,")
# ... and as those created with ``optimize_steps`` but before ``min_steps``.
STEPS_SCHEMA = NETWORK_SCHEMA.replace("network_blocks INTEGER,", "network_blocks INTEGER, optimize_steps INTEGER,")


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


def _columns(path: Path) -> dict[str, tuple[str, int]]:
    conn = sqlite3.connect(path)
    try:
        return {row[1]: (row[2], row[3]) for row in conn.execute("PRAGMA table_info(jobs)")}  # name: (type, notnull)
    finally:
        conn.close()


def test_the_attack_network_round_trips(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    sized, default = store.create(request(network_channels=8, network_blocks=0)), store.create(request())
    assert store.get(sized.id).request == request(network_channels=8, network_blocks=0)
    assert (default.request.network_channels, default.request.network_blocks) == (None, None)
    claimed = store.claim_next(worker_pid=1)
    assert claimed is not None and (claimed.request.network_channels, claimed.request.network_blocks) == (8, 0)


def test_the_optimize_steps_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    stepped = store.create(request(attack=AttackName.OPTIMIZE, epochs=None, optimize_steps=7))
    hybrid = store.create(request(attack=AttackName.HYBRID))
    assert store.get(stepped.id).request == request(attack=AttackName.OPTIMIZE, epochs=None, optimize_steps=7)
    assert hybrid.request.attack is AttackName.HYBRID and hybrid.request.optimize_steps is None
    claimed = store.claim_next(worker_pid=1)
    assert claimed is not None and claimed.id == stepped.id and claimed.request.optimize_steps == 7


def test_the_decoders_min_steps_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    raised, default = store.create(request(attack=AttackName.GAN, min_steps=5600)), store.create(request())
    assert store.get(raised.id).request == request(attack=AttackName.GAN, min_steps=5600)
    assert default.request.min_steps is None  # the attack's default
    claimed = store.claim_next(worker_pid=1)
    assert claimed is not None and claimed.id == raised.id and claimed.request.min_steps == 5600


def test_a_database_from_before_the_min_steps_column_still_works(tmp_path: Path) -> None:
    path = old_database(
        tmp_path / "steps.db", STEPS_SCHEMA,
        "INSERT INTO jobs(id, status, bundle, model_id, bundle_dir, attack, epochs, network_channels, network_blocks,"
        " optimize_steps, dataset, use_captures, seed, created_at) VALUES"
        " ('queued', 'queued', 'b', 'm', '/b', 'decoder', 4, 8, 1, NULL, NULL, 1, 0, 1.0)",
    )
    assert "min_steps" not in _columns(path)
    store = JobStore(path)
    claimed = store.claim_next(worker_pid=2)  # queued before the upgrade: it runs with the decoder's default
    assert claimed is not None and claimed.id == "queued" and claimed.request.min_steps is None
    assert store.get(store.create(request(min_steps=7)).id).request.min_steps == 7
    fresh = tmp_path / "fresh.db"
    JobStore(fresh)
    assert _columns(path) == _columns(fresh) and _columns(path)["min_steps"] == ("INTEGER", 0)


def old_database(path: Path, schema: str, rows: str) -> Path:
    """A jobs database as an earlier version wrote it: ``schema``, then the ``rows`` INSERT."""
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.execute(rows)
    conn.commit()
    conn.close()
    return path


def test_a_database_from_before_the_optimize_steps_column_still_works(tmp_path: Path) -> None:
    path = old_database(
        tmp_path / "network.db", NETWORK_SCHEMA,
        "INSERT INTO jobs(id, status, bundle, model_id, bundle_dir, attack, epochs, network_channels, network_blocks,"
        " dataset, use_captures, seed, created_at, result) VALUES"
        " ('old', 'succeeded', 'b', 'm', '/b', 'decoder', 2, 8, 1, NULL, 0, 4, 1.0, '{}'),"
        " ('queued', 'queued', 'b', 'm', '/b', 'gan', NULL, NULL, NULL, NULL, 1, 0, 2.0, NULL)",
    )
    assert "optimize_steps" not in _columns(path)

    store = JobStore(path)
    assert [job.id for job in store.list_jobs()] == ["queued", "old"]
    assert store.get("old").request == JobRequest(bundle="b", model_id="m", bundle_dir="/b", attack=AttackName.DECODER,
                                                  epochs=2, dataset=None, use_captures=False, seed=4,
                                                  network_channels=8, network_blocks=1)  # no steps: the default
    claimed = store.claim_next(worker_pid=2)  # a job queued before the upgrade still runs
    assert claimed is not None and claimed.id == "queued" and claimed.request.optimize_steps is None
    new = store.create(request(attack=AttackName.OPTIMIZE, epochs=None, optimize_steps=3))
    assert store.get(new.id).request.optimize_steps == 3
    fresh = tmp_path / "fresh.db"
    JobStore(fresh)
    assert _columns(path) == _columns(fresh) and _columns(path)["optimize_steps"] == ("INTEGER", 0)


def test_a_database_from_before_the_network_columns_still_works(tmp_path: Path) -> None:
    path = old_database(
        tmp_path / "old.db", OLD_SCHEMA,
        "INSERT INTO jobs(id, status, bundle, model_id, bundle_dir, attack, epochs, dataset, use_captures, seed,"
        " created_at, result) VALUES ('old', 'succeeded', 'b', 'm', '/b', 'gan', 3, NULL, 1, 5, 1.0, '{}')",
    )

    store = JobStore(path)
    old = store.get("old")
    assert old is not None and old.status is AuditStatus.SUCCEEDED
    assert old.request == JobRequest(bundle="b", model_id="m", bundle_dir="/b", attack=AttackName.GAN, epochs=3,
                                     dataset=None, use_captures=True, seed=5)  # the network: the attack's default
    new = store.create(request(network_channels=16, network_blocks=2))
    claimed = store.claim_next(worker_pid=3)
    assert claimed is not None and claimed.id == new.id
    assert (claimed.request.network_channels, claimed.request.network_blocks) == (16, 2)
    assert [job.id for job in store.list_jobs()] == [new.id, "old"]
    assert JobStore(path).get(new.id) == store.get(new.id)  # opening it again changes nothing
    fresh = tmp_path / "fresh.db"
    JobStore(fresh)
    assert _columns(path) == _columns(fresh)  # the same columns as a database created today, nullable alike
    assert _columns(path)["network_channels"] == _columns(path)["network_blocks"] == ("INTEGER", 0)
