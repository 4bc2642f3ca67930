"""Start a service as a child process and learn its address from its ``LISTENING`` line.

Every server of the system (``cem-cloud``, ``cem-tap``, ``cem-audit``) binds its
socket first and then prints ``LISTENING HOST:PORT`` on stdout (``cem.wire``); with
port 0 that line is how a parent learns the port without racing for one.
``ServiceProcess`` is the one place that starts such a child, waits for the line
within a deadline (noticing at once when the child exits first) and stops it
again: SIGTERM to the service itself (a service stops its own workers), then
SIGKILL after a grace period, to its whole process group when it was started in
a session of its own. The demo, the benchmarks and the tests start their
services through it.

One reader thread per child reads its stdout, so the caller never blocks on a
half-written line: it keeps every line (the tap's ``METRICS`` line before
``LISTENING``, its ``--json`` counters at exit) and, on Linux, learns of the
child's exit from a pidfd, so nothing polls. The child's stderr goes straight to
the log file; the parent keeps no handle on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from cem.errors import ServiceStartError
from cem.wire import parse_listening_line

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT_S = 60.0
DEFAULT_GRACE_S = 15.0
LOG_TAIL_LINES = 20
MAX_STDOUT_LINES = 10_000  # services print a few lines on stdout; a chatty one cannot fill memory
_READ_BYTES = 64 * 1024
_MAX_READS = 16  # per wake-up, so a child that never stops printing cannot starve the exit check
_EXIT_POLL_S = 0.1  # only where the platform has no pidfd (not Linux)
_SETTLE_S = 2.0  # an end of file and the exit that causes it are seen one after the other, not at once
_TAIL_BYTES = 64 * 1024


class ServiceProcess:
    """A child service that printed ``LISTENING HOST:PORT``; made by :meth:`start`.

    ``with ServiceProcess.start(argv, log_path=log) as cloud: ...`` stops it (``terminate``) on the
    way out. After ``wait``, ``terminate`` or ``kill`` return, its stdout is complete and the parent
    holds no handle of it.
    """

    def __init__(self, popen: subprocess.Popen, name: str, log_path: Path | None, new_session: bool) -> None:
        """Use :meth:`start`; this takes a child that was just started with its stdout on a pipe."""
        assert popen.stdout is not None
        self.name = name
        self.log_path = log_path
        self._popen = popen
        self._new_session = new_session
        self._stdout_fd = popen.stdout.fileno()
        os.set_blocking(self._stdout_fd, False)
        self._pidfd = _open_pidfd(popen.pid)
        self._wake_r, self._wake_w = os.pipe()
        self._lines: deque[str] = deque(maxlen=MAX_STDOUT_LINES)
        self._lines_lock = threading.Lock()
        self._partial = b""
        self._listening: tuple[str, int] | None = None
        self._settled = threading.Event()  # LISTENING seen, or the reader stopped (exit, end of file)
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"{name} stdout", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path | None = None,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
        timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> ServiceProcess:
        """Start ``argv`` and return once it printed ``LISTENING HOST:PORT``.

        ``log_path``: the child's stderr is appended there (None: it shares this process's stderr).
        ``env``: the child's whole environment, as for ``subprocess.Popen`` (None: this one's).
        ``new_session``: the child leads its own session and process group, so a Ctrl-C at the
        terminal reaches only this process, and ``kill``/``terminate`` also end whatever the
        service started (workers) and left behind.

        Raises ``ServiceStartError`` (with the log's last lines) when the child exits, or closes
        its stdout, before that line, or prints none within ``timeout_s``; it is killed either way.
        """
        args = [os.fspath(arg) for arg in argv]
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child gets its own copy of the log's handle; ours is closed as soon as it has started.
        with open(log_path, "ab") if log_path is not None else contextlib.nullcontext() as log:
            popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                                     cwd=cwd, start_new_session=new_session)
        service = cls(popen, name or _name_of(args), log_path, new_session)
        try:
            service._await_listening(timeout_s)
        except BaseException:  # a Ctrl-C while waiting too: the child is never left behind
            service.kill()
            raise
        logger.info("%s listening on %s (pid %d)", service.name, service.address, service.pid)
        return service

    def _await_listening(self, timeout_s: float) -> None:
        """Return once it printed the line; raise (``start`` then kills it) when it cannot any more."""
        expected = f"expected {self.name} to print 'LISTENING HOST:PORT'"
        if not self._settled.wait(timeout_s):
            raise ServiceStartError(f"{expected} within {timeout_s:g} s; it printed none and was killed"
                                    f"{self._output_tail()}")
        if self._listening is None:
            try:
                outcome = f"it exited with code {self._popen.wait(_SETTLE_S)} first"
            except subprocess.TimeoutExpired:
                outcome = "it closed its stdout first and was killed"
            raise ServiceStartError(f"{expected}; {outcome}{self._output_tail()}")

    # What it printed and where it listens.

    @property
    def address(self) -> str:
        """``HOST:PORT`` from the ``LISTENING`` line (an IPv6 host keeps its brackets)."""
        return f"{self.host}:{self.port}"

    @property
    def host(self) -> str:
        assert self._listening is not None, "started by ServiceProcess.start, so it printed LISTENING"
        return self._listening[0]

    @property
    def port(self) -> int:
        assert self._listening is not None, "started by ServiceProcess.start, so it printed LISTENING"
        return self._listening[1]

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it exited (negative: the signal that ended it), else None."""
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def stdout_lines(self) -> list[str]:
        """Every line it printed on stdout so far (the last ``MAX_STDOUT_LINES``), ``LISTENING`` included."""
        with self._lines_lock:
            return list(self._lines)

    def log_text(self) -> str:
        """The log file's text ("" without a log file)."""
        return "" if self.log_path is None else self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The log file's last ``lines`` lines ("" without a log file)."""
        if self.log_path is None:
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _output_tail(self) -> str:
        if self.log_path is not None:
            return f"; last lines of {self.log_path}:\n{self.log_tail()}"
        return "; last lines of its stdout:\n" + "\n".join(self.stdout_lines()[-LOG_TAIL_LINES:])

    # Stopping.

    def send_signal(self, sig: int) -> None:
        """Signal the service itself (not its process group); nothing once it has been waited for."""
        self._popen.send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> int:
        """Its exit code once it exits (``subprocess.TimeoutExpired`` past ``timeout_s``).

        Then everything it printed is in ``stdout_lines`` and its handles are closed: processes it
        left behind that print on the stdout they inherited later get EPIPE.
        """
        code = self._popen.wait(timeout_s)
        self._close()
        return code

    def terminate(self, grace_s: float = DEFAULT_GRACE_S) -> int:
        """SIGTERM (it shuts down gracefully), SIGKILL after ``grace_s``, then ``kill``; its exit code."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %g s; killing it", self.name, grace_s)
        return self.kill()

    def kill(self) -> int:
        """SIGKILL it (in a new session: its whole process group, leftovers too) and wait; its exit code."""
        if self._new_session:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
                os.killpg(self._popen.pid, signal.SIGKILL)
        elif self._popen.poll() is None:
            self._popen.kill()
        return self.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.terminate()

    def __repr__(self) -> str:
        where = self.address if self._listening else "not listening"
        return f"<ServiceProcess {self.name} pid={self.pid} {where} returncode={self.returncode}>"

    # The reader thread.

    def _read(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._stdout_fd, selectors.EVENT_READ, "stdout")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self._pidfd is not None:
            selector.register(self._pidfd, selectors.EVENT_READ, "exit")
        try:
            while True:
                ready = {key.data for key, _ in selector.select(None if self._pidfd is not None else _EXIT_POLL_S)}
                if "wake" in ready:
                    return
                if "stdout" in ready and not self._read_available():
                    return  # end of file: the child and everything that inherited its stdout closed it
                if "exit" in ready or (self._pidfd is None and self._popen.poll() is not None):
                    self._read_available()  # all it printed is in the pipe by now
                    return
        finally:
            selector.close()
            if self._partial:
                self._add_line(self._partial)
                self._partial = b""
            self._settled.set()

    def _read_available(self) -> bool:
        """Read what the pipe holds now; False at end of file."""
        for _ in range(_MAX_READS):
            try:
                chunk = os.read(self._stdout_fd, _READ_BYTES)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for raw in complete:
                self._add_line(raw)
            if len(self._partial) > _READ_BYTES:  # a line without end is kept in pieces, not whole
                self._add_line(self._partial)
                self._partial = b""
        return True

    def _add_line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        with self._lines_lock:
            self._lines.append(line)
        if self._listening is None:
            self._listening = parse_listening_line(line)
            if self._listening is not None:
                self._settled.set()

    def _close(self) -> None:
        """Stop the reader and close every handle; the child has exited."""
        if self._closed:
            return
        self._reader.join(_SETTLE_S)  # it stops by itself once it sees the exit
        if self._reader.is_alive():
            os.write(self._wake_w, b"x")
            self._reader.join()
        for fd in (self._wake_r, self._wake_w, self._pidfd):
            if fd is not None:
                os.close(fd)
        assert self._popen.stdout is not None
        self._popen.stdout.close()
        self._closed = True


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _name_of(argv: Sequence[str]) -> str:
    """``cem-tap`` for ``.../bin/cem-tap ...``, ``attacker.tap.cli`` for ``python -m attacker.tap.cli ...``."""
    if len(argv) > 2 and argv[1] == "-m":
        return argv[2]
    return Path(argv[0]).name
