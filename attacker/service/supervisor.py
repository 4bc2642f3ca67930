"""The pool of worker processes behind the API: start, watch, restart, stop.

``max_jobs`` workers each run one audit at a time, so at most ``max_jobs``
audits run at once. A monitor thread notices a worker that died (out of
memory, killed), gives its running job back (interrupted, or queued again
under ``on_restart="requeue"``) and starts a replacement, with a back-off so a
worker that crashes on start does not spin.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from attacker.service.config import ServiceSettings
from attacker.service.jobs import JobStore

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_RUN_S = 60.0  # a worker that lived this long resets the back-off
MONITOR_INTERVAL_S = 0.5


class WorkerPool:
    def __init__(self, settings: ServiceSettings, store: JobStore, log_level: str = "INFO") -> None:
        self.settings = settings
        self.store = store
        self.log_level = log_level
        self._workers: list[subprocess.Popen | None] = [None] * settings.max_jobs
        self._failures = [0] * settings.max_jobs
        self._next_start = [0.0] * settings.max_jobs
        self._started = [0.0] * settings.max_jobs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="audit-worker-monitor", daemon=True)

    def command(self) -> list[str]:
        """The worker's command line: its whole ``WorkerSettings`` as one JSON argument."""
        settings = self.settings.worker_settings(parent_pid=os.getpid(), log_level=self.log_level)
        return [sys.executable, "-m", "attacker.service.worker", settings.to_json()]

    def start(self) -> None:
        with self._lock:
            for slot in range(len(self._workers)):
                self._spawn(slot)
        self._monitor.start()

    def alive(self) -> int:
        with self._lock:
            return sum(1 for p in self._workers if p is not None and p.poll() is None)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._workers if p is not None and p.poll() is None]

    def _spawn(self, slot: int) -> None:
        process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, close_fds=True)
        self._workers[slot] = process
        self._started[slot] = time.monotonic()
        logger.info("started audit worker %d (slot %d)", process.pid, slot)

    def _watch(self) -> None:
        while not self._stop.wait(MONITOR_INTERVAL_S):
            with self._lock:
                if self._stop.is_set():
                    return
                for slot, process in enumerate(self._workers):
                    if process is not None and process.poll() is not None:
                        self._reap(slot, process)
                    if self._workers[slot] is None and time.monotonic() >= self._next_start[slot]:
                        self._spawn(slot)

    def _reap(self, slot: int, process: subprocess.Popen) -> None:
        recovered = self.store.recover_running(self.settings.on_restart, worker_pid=process.pid)
        if time.monotonic() - self._started[slot] >= HEALTHY_RUN_S:
            self._failures[slot] = 0
        delay = RESTART_BACKOFF_S[min(self._failures[slot], len(RESTART_BACKOFF_S) - 1)]
        self._failures[slot] += 1
        self._next_start[slot] = time.monotonic() + delay
        self._workers[slot] = None
        logger.warning(
            "audit worker %d exited with code %s; %d running audit(s) given back (%s); restarting in %.0f s",
            process.pid, process.returncode, len(recovered), self.settings.on_restart, delay,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every worker (each gives its job back), SIGKILL stragglers, then recover what is left."""
        self._stop.set()
        if self._monitor.is_alive():
            self._monitor.join()
        with self._lock:
            processes = [p for p in self._workers if p is not None]
            self._workers = [None] * len(self._workers)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("audit worker %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
            self.store.recover_running(self.settings.on_restart, worker_pid=process.pid)
        logger.info("audit workers stopped")
