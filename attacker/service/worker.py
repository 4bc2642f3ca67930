"""The audit worker process: claims queued jobs from SQLite and runs them, one at a time.

Started by the service's ``WorkerPool`` as ``python -m attacker.service.worker SETTINGS``,
``SETTINGS`` being its ``WorkerSettings`` as JSON (validated here); it reads the
bundle and the captures itself and writes results to SQLite and the results
folder. Nothing is unpickled.

It stops (and gives its running job back as interrupted, or queued again under
``on_stop="requeue"``) on SIGTERM or when its parent service disappears: the
kernel sends SIGTERM on the parent's death (Linux), and the parent pid is also
checked whenever the audit polls ``should_stop`` and between jobs.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attacker.audit import AuditCancelled, AuditSpec, run_audit
from attacker.service.config import WorkerSettings
from attacker.service.jobs import INTERRUPTED_ERROR, AuditStatus, Job, JobStore
from cem.bundle import load_manifest
from cem.captures.reader import CapturedFeatures, CaptureStore
from cem.cli import run_cli
from cem.durable import write_durably
from cem.errors import CEMError, ConfigError
from cem.logs import configure_logging

logger = logging.getLogger("attacker.service.worker")

PNG_NAME = "reconstructions.png"
PROGRESS_EVERY_S = 0.5
STOP_CHECK_EVERY_S = 0.25
_PR_SET_PDEATHSIG = 1


class AuditWorker:
    def __init__(self, settings: WorkerSettings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._stopping = False

    def request_stop(self) -> None:
        self._stopping = True

    @property
    def stopping(self) -> bool:
        if not self._stopping and os.getppid() != self.settings.parent_pid:
            logger.warning("the audit service (pid %d) is gone; stopping", self.settings.parent_pid)
            self._stopping = True
        return self._stopping

    def run_forever(self) -> None:
        logger.info("audit worker %d ready", os.getpid())
        while not self.stopping:
            job = self.store.claim_next(os.getpid())
            if job is None:
                time.sleep(self.settings.poll_interval_s)
                continue
            self.run_job(job)
        logger.info("audit worker %d stopped", os.getpid())

    def run_job(self, job: Job) -> None:
        assert job.lease is not None
        lease = job.lease
        started = time.monotonic()
        request = job.request
        logger.info(
            "audit %s started: bundle %s, attack %s, epochs %s, network channels %s, blocks %s, min steps %s, "
            "optimize steps %s",
            job.id, request.bundle, request.attack, request.epochs, request.network_channels, request.network_blocks,
            request.min_steps, request.optimize_steps,
        )
        try:
            spec, captured = self._prepare(job)
            result = run_audit(
                spec,
                captured=captured,
                progress=self._progress(job.id, lease),
                should_stop=self._should_stop(job.id, lease),
            )
            png_path = self.settings.results_dir / job.id / PNG_NAME
            png_path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(png_path, result.reconstructions_png)
            saved = self.store.finish(
                job.id, lease, AuditStatus.SUCCEEDED, result=json_safe(result.to_dict()), png_path=str(png_path)
            )
            outcome = "succeeded" if saved else "finished after losing its lease; result discarded"
        except AuditCancelled:
            outcome = self._give_back(job.id, lease)
        except CEMError as exc:
            self.store.finish(job.id, lease, AuditStatus.FAILED, error=str(exc))
            outcome = f"failed: {exc}"
        except Exception as exc:  # a bug in an attack must not kill the worker or leave the job running
            logger.exception("audit %s crashed", job.id)
            self.store.finish(
                job.id, lease, AuditStatus.FAILED, error=f"internal error ({type(exc).__name__}); see the service log"
            )
            outcome = "failed with an internal error"
        logger.info("audit %s %s after %.1f s", job.id, outcome, time.monotonic() - started)

    def _prepare(self, job: Job) -> tuple[AuditSpec, CapturedFeatures | None]:
        bundle_dir = Path(job.request.bundle_dir)
        manifest = load_manifest(bundle_dir)
        if manifest.model_id != job.request.model_id:
            raise ConfigError(
                f"expected bundle {job.request.bundle} to hold model {job.request.model_id}, got {manifest.model_id}"
            )
        spec = AuditSpec(
            bundle_dir=bundle_dir,
            attack=job.request.attack,
            dataset=job.request.dataset,
            data_dir=self.settings.data_dir,
            epochs=job.request.epochs,
            seed=job.request.seed,
            device=self.settings.device,
            network_channels=job.request.network_channels,
            network_blocks=job.request.network_blocks,
            optimize_steps=job.request.optimize_steps,
            min_steps=job.request.min_steps,
        )
        captured = None
        if job.request.use_captures and self.settings.max_captured_samples > 0:
            captured = CaptureStore(self.settings.captures_dir).load(
                manifest.model_id, feature_shape=manifest.feature_shape, max_samples=self.settings.max_captured_samples
            )
            logger.info(
                "audit %s: %d captured sample(s) for model %s", job.id, len(captured.sample_ids), manifest.model_id
            )
            if not captured.sample_ids:
                captured = None
        return spec, captured

    def _progress(self, job_id: str, lease: str) -> Callable[[float, str], None]:
        last = [0.0]

        def report(fraction: float, message: str) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or fraction >= 1.0:
                last[0] = now
                self.store.update_progress(job_id, lease, fraction, message)

        return report

    def _should_stop(self, job_id: str, lease: str) -> Callable[[], bool]:
        last = [0.0, False]

        def check() -> bool:
            if self.stopping:
                return True
            now = time.monotonic()
            if now - last[0] >= STOP_CHECK_EVERY_S:
                last[0], last[1] = now, self.store.should_stop(job_id, lease)
            return bool(last[1])

        return check

    def _give_back(self, job_id: str, lease: str) -> str:
        """After AuditCancelled: the user cancelled, or this worker is stopping, or the job was taken away."""
        if self._stopping:
            if self.settings.on_stop == "requeue":
                self.store.finish(job_id, lease, AuditStatus.QUEUED)
                return "requeued: the worker is stopping"
            self.store.finish(job_id, lease, AuditStatus.INTERRUPTED, error=INTERRUPTED_ERROR)
            return "interrupted: the worker is stopping"
        if self.store.finish(job_id, lease, AuditStatus.CANCELLED):
            return "cancelled"
        return "abandoned: the job is no longer this worker's"


def json_safe(value: Any) -> Any:
    """Non-finite floats (a PSNR of a perfect reconstruction is +inf) become None: JSON has no infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal this process when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attacker.service.worker", description="Audit worker (started by cem-audit)."
    )
    parser.add_argument("settings", help="WorkerSettings as JSON, as WorkerPool writes it")
    return parser


def run(settings_json: str) -> int:
    settings = WorkerSettings.from_json(settings_json)
    configure_logging(settings.log_level)
    set_parent_death_signal()
    torch.set_num_threads(settings.threads)
    worker = AuditWorker(settings, JobStore(settings.db_path))
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.request_stop())
    signal.signal(signal.SIGINT, lambda signum, frame: worker.request_stop())
    if os.getppid() != settings.parent_pid:  # the parent died before the death signal was armed
        return 0
    worker.run_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    return run_cli(parser.prog, lambda: run(args.settings))


if __name__ == "__main__":
    sys.exit(main())
