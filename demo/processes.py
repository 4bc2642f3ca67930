"""The demo's services as child processes, always stopped again.

Each service is started through ``cem.processes.ServiceProcess``, which reads its
address from the ``LISTENING HOST:PORT`` line (port 0: the OS picks a free one,
so nothing races for ports). Children run in their own session, so a Ctrl-C
reaches only the orchestrator, which then stops them in reverse order: SIGTERM
first (the services shut down gracefully), SIGKILL to the whole process group
after a grace period.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from cem.errors import ServiceStartError
from cem.processes import ServiceProcess

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
GRACE_S = 15.0


def entry_point(name: str) -> str:
    """Path of a console script installed beside this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceStartError(f"expected the console script {name!r} to be installed (pip install -e .)")
    return found


class ServiceGroup:
    """Context manager that owns services and stops all of them, newest first, however it exits."""

    def __init__(self) -> None:
        self.services: list[ServiceProcess] = []

    def start(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
              timeout_s: float = START_TIMEOUT_S) -> str:
        """Start a service (``env`` added to ours, stderr appended to ``log_path``); its ``HOST:PORT``."""
        service = ServiceProcess.start(argv, log_path=log_path, name=name, env={**os.environ, **(env or {})},
                                       new_session=True, timeout_s=timeout_s)
        self.services.append(service)
        return service.address

    def stop_all(self) -> None:
        while self.services:
            service = self.services.pop()
            code = service.terminate(GRACE_S)
            logger.info("%s stopped (exit code %s)", service.name, code)

    def __enter__(self) -> ServiceGroup:
        self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
