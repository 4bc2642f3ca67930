"""Audit jobs in SQLite (WAL): the only channel between the API process and its workers.

The API inserts jobs and requests cancellation; workers claim queued jobs,
report progress and write results. Nothing but ids, paths and JSON crosses
between the processes, so no pickle is ever read.

Life of a job::

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
       │                 │
       └──cancel──▶ cancelled     └──service or worker died──▶ interrupted (or queued again)

Each claim hands the worker a fresh ``lease``; every later write by the worker
is conditional on it, so a worker that lost its job (the service restarted and
marked it interrupted) can never overwrite what happened since.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attacker.attack_names import AttackName


class AuditStatus(str, enum.Enum):
    """Where an audit is: queued, running, then one final status: succeeded, failed, cancelled or interrupted.

    The values are part of the audit API and of the job database: add members, never rename one.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:  # the value, as StrEnum (Python >= 3.11) would: f-strings and logs
        return self.value


FINAL_STATUSES = frozenset(
    {AuditStatus.SUCCEEDED, AuditStatus.FAILED, AuditStatus.CANCELLED, AuditStatus.INTERRUPTED}
)
INTERRUPTED_ERROR = "the audit service stopped while this audit was running"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    bundle TEXT NOT NULL,
    model_id TEXT NOT NULL,
    bundle_dir TEXT NOT NULL,
    attack TEXT NOT NULL,
    epochs INTEGER,
    network_channels INTEGER,
    network_blocks INTEGER,
    optimize_steps INTEGER,
    min_steps INTEGER,
    dataset TEXT,
    use_captures INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    lease TEXT,
    result TEXT,
    png_path TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, created_at);
"""
# Columns added to ``jobs`` after databases already existed: ``JobStore`` adds those a database lacks.
ADDED_COLUMNS = (("network_channels", "INTEGER"), ("network_blocks", "INTEGER"), ("optimize_steps", "INTEGER"),
                 ("min_steps", "INTEGER"))


@dataclass(frozen=True)
class JobRequest:
    """What an audit was asked to do; the bundle is already resolved to a folder."""

    bundle: str
    model_id: str
    bundle_dir: str
    attack: AttackName
    epochs: int | None
    dataset: str | None
    use_captures: bool
    seed: int = 0
    network_channels: int | None = None  # the attacker's decoding network; None: the attack's default
    network_blocks: int | None = None
    optimize_steps: int | None = None  # the optimisation attacks' steps per image; None: the attack's default
    min_steps: int | None = None  # the decoder's least optimizer steps; None: the attack's default


@dataclass(frozen=True)
class Job:
    id: str
    status: AuditStatus
    request: JobRequest
    progress: float
    message: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancel_requested: bool
    attempts: int
    worker_pid: int | None
    lease: str | None
    result: dict[str, Any] | None
    png_path: str | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            status=AuditStatus(row["status"]),
            request=JobRequest(
                bundle=row["bundle"],
                model_id=row["model_id"],
                bundle_dir=row["bundle_dir"],
                attack=AttackName(row["attack"]),
                epochs=row["epochs"],
                dataset=row["dataset"],
                use_captures=bool(row["use_captures"]),
                seed=row["seed"],
                network_channels=row["network_channels"],
                network_blocks=row["network_blocks"],
                optimize_steps=row["optimize_steps"],
                min_steps=row["min_steps"],
            ),
            progress=row["progress"],
            message=row["message"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            cancel_requested=bool(row["cancel_requested"]),
            attempts=row["attempts"],
            worker_pid=row["worker_pid"],
            lease=row["lease"],
            result=json.loads(row["result"]) if row["result"] else None,
            png_path=row["png_path"],
            error=row["error"],
        )


class JobStore:
    """Short-lived connections per call: safe from any thread and any process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a database created before ``ADDED_COLUMNS`` up to date (under the write lock: the API and its
        workers open the store at the same time, and only one of them may add a column)."""
        with self._transaction() as conn:
            present = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, declaration in ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def create(self, request: JobRequest) -> Job:
        job_id = uuid.uuid4().hex
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs(id, status, bundle, model_id, bundle_dir, attack, epochs, network_channels,"
                " network_blocks, optimize_steps, min_steps, dataset, use_captures, seed, created_at)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id, request.bundle, request.model_id, request.bundle_dir, request.attack, request.epochs,
                    request.network_channels, request.network_blocks, request.optimize_steps, request.min_steps,
                    request.dataset, int(request.use_captures), request.seed, time.time(),
                ),
            )
        return self._require(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def _require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def list_jobs(self, status: AuditStatus | None = None, limit: int = 100, *, bundle: str | None = None) -> list[Job]:
        """Newest first; ``status`` and ``bundle`` (the folder name) narrow the list when given."""
        given = (("status", status), ("bundle", bundle))
        conditions = [(column, value) for column, value in given if value is not None]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(f"{c} = ?" for c, _ in conditions) if conditions else "")
        params = tuple(str(value) for _, value in conditions)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def count_jobs(self, status: AuditStatus) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    def count_by_status(self) -> dict[AuditStatus, int]:
        """How many jobs are in each status (statuses without jobs are absent)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {AuditStatus(row["status"]): row["n"] for row in rows}

    def run_durations(self) -> list[tuple[str, AuditStatus, float]]:
        """(attack, final status, seconds) of every finished job that ran: from its last claim to its end.

        A job cancelled before it started never ran and is left out; one given back as interrupted ends
        when the service noticed.
        """
        final = tuple(str(status) for status in FINAL_STATUSES)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT attack, status, MAX(finished_at - started_at, 0) AS seconds FROM jobs"
                f" WHERE status IN ({', '.join('?' * len(final))})"
                " AND started_at IS NOT NULL AND finished_at IS NOT NULL",
                final,
            ).fetchall()
        return [(row["attack"], AuditStatus(row["status"]), float(row["seconds"])) for row in rows]

    def latest_succeeded(self) -> list[Job]:
        """Per (model id, attack), the job that succeeded last (by ``finished_at``)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY model_id, attack"
                " ORDER BY finished_at DESC, rowid DESC) AS recency FROM jobs WHERE status = 'succeeded')"
                " WHERE recency = 1 ORDER BY model_id, attack"
            ).fetchall()
        return [Job.from_row(row) for row in rows]

    def claim_next(self, worker_pid: int) -> Job | None:
        """Atomically move the oldest queued job to running under a new lease."""
        lease = uuid.uuid4().hex
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', lease = ?, worker_pid = ?, started_at = ?, progress = 0,"
                " message = 'starting', attempts = attempts + 1, error = NULL WHERE id = ?",
                (lease, worker_pid, time.time(), row["id"]),
            )
        return self._require(row["id"])

    def update_progress(self, job_id: str, lease: str, fraction: float, message: str) -> bool:
        """False when the worker no longer owns the job."""
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND lease = ? AND status = 'running'",
                (min(1.0, max(0.0, float(fraction))), message[:200], job_id, lease),
            )
        return cursor.rowcount == 1

    def should_stop(self, job_id: str, lease: str) -> bool:
        """True when cancellation was requested or the job is no longer this worker's."""
        with self._connect() as conn:
            row = conn.execute("SELECT status, lease, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is None or row["status"] != "running" or row["lease"] != lease or bool(row["cancel_requested"])

    def finish(
        self,
        job_id: str,
        lease: str,
        status: AuditStatus,
        *,
        result: dict[str, Any] | None = None,
        png_path: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the worker's outcome; False (nothing written) when it no longer owns the job."""
        if status not in FINAL_STATUSES and status != AuditStatus.QUEUED:
            raise ValueError(f"expected a final status or 'queued', got {str(status)!r}")
        finished_at = None if status == AuditStatus.QUEUED else time.time()
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, png_path = ?, error = ?, lease = NULL,"
                " progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END"
                " WHERE id = ? AND lease = ? AND status = 'running'",
                (status, finished_at, json.dumps(result) if result is not None else None, png_path, error, status,
                 job_id, lease),
            )
        return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> Job | None:
        """Queued -> cancelled at once; running -> flagged for the worker; finished jobs are left alone."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, message = 'cancelled before it started'"
                " WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))
        return self.get(job_id)

    def recover_running(self, policy: str, *, worker_pid: int | None = None) -> list[str]:
        """Running jobs whose worker is gone (all of them at start-up, or one worker's) -> interrupted or queued.

        A job whose cancellation was already requested becomes cancelled either way.
        """
        where = "status = 'running'"
        params: tuple[int, ...] = ()
        if worker_pid is not None:
            where, params = where + " AND worker_pid = ?", (worker_pid,)
        now = time.time()
        with self._transaction() as conn:
            ids = [r["id"] for r in conn.execute(f"SELECT id FROM jobs WHERE {where}", params)]
            conn.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, lease = NULL"
                f" WHERE {where} AND cancel_requested = 1",
                (now, *params),
            )
            if policy == "requeue":
                conn.execute(
                    f"UPDATE jobs SET status = 'queued', lease = NULL, worker_pid = NULL, progress = 0,"
                    f" message = 'requeued after the service restarted' WHERE {where}",
                    params,
                )
            else:
                conn.execute(
                    f"UPDATE jobs SET status = 'interrupted', finished_at = ?, lease = NULL, error = ? WHERE {where}",
                    (now, INTERRUPTED_ERROR, *params),
                )
        return ids
