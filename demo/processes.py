"""Start the system's services as child processes and always stop them again.

Each service prints ``LISTENING HOST:PORT`` on stdout once it is bound (with port
0 it picks a free one), which is how the orchestrator learns its address without
racing for ports. Children run in their own session, so a Ctrl-C reaches only
the orchestrator, which then stops them in reverse order: SIGTERM first (the
services shut down gracefully), SIGKILL after a grace period.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from cem.errors import CEMError

logger = logging.getLogger(__name__)

LISTENING = re.compile(r"^LISTENING (\S+):(\d+)\s*$")


class ServiceStartError(CEMError):
    """A service exited or stayed silent before it reported its address."""


def entry_point(name: str) -> str:
    """Path of a console script installed beside this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceStartError(f"expected the console script {name!r} to be installed (pip install -e .)")
    return found


@dataclass
class ServiceProcess:
    """One long-running service; ``start`` returns ``host:port`` from its LISTENING line."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    address: str | None = None
    _drain: threading.Thread | None = None

    def start(self, timeout_s: float = 120.0) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a", buffering=1)
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        address = self._await_listening(log, timeout_s)
        self._drain = threading.Thread(target=self._copy_rest, args=(self.process.stdout, log), daemon=True)
        self._drain.start()
        self.address = address
        logger.info("%s listening on %s (pid %d)", self.name, address, self.process.pid)
        return address

    def _await_listening(self, log: IO[str], timeout_s: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        result: list[str] = []

        def read() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                log.write(line)
                match = LISTENING.match(line.strip())
                if match:
                    result.append(f"{match.group(1)}:{match.group(2)}")
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result:
            self.stop()
            raise ServiceStartError(
                f"{self.name} did not report 'LISTENING HOST:PORT' within {timeout_s:.0f} s; see {self.log_path}"
            )
        return result[0]

    @staticmethod
    def _copy_rest(stream: IO[str] | None, log: IO[str]) -> None:
        if stream is None:
            return
        for line in stream:
            log.write(line)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM the service's process group, SIGKILL it after ``grace_s``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, grace_s)
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        _signal_group(self.process.pid, signal.SIGKILL)  # anything the service itself left behind
        return self.process.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ServiceGroup:
    """Context manager that owns services and stops all of them, newest first, however it exits."""

    def __init__(self) -> None:
        self.services: list[ServiceProcess] = []

    def start(self, service: ServiceProcess, timeout_s: float = 120.0) -> str:
        self.services.append(service)
        return service.start(timeout_s)

    def stop_all(self) -> None:
        while self.services:
            service = self.services.pop()
            code = service.stop()
            logger.info("%s stopped (exit code %s)", service.name, code)

    def __enter__(self) -> "ServiceGroup":
        self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
