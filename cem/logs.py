"""Service logging: one format, and a cap on how often one message can repeat.

A remote caller decides how often a service logs: every refused request logs a
line, and a flood of hostile requests would otherwise become a flood of log
lines (disk, log shipping, and the one real error drowned among them). The
filter lets the first ``burst`` records of each message (same logger, level and
format string) through per ``window_s``, drops the rest, and says how many it
dropped on the first record of that message after the window.

``LimitedWarnings`` applies the same window at the call site, for one kind of
warning that a remote client can cause once per connection (the relay tap): it
costs nothing past the burst, works whoever configured the handlers, and sums
up what it left out in a line of its own, also when the service stops.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_BURST = 20
DEFAULT_WINDOW_S = 60.0


class _Window:
    """One message's records in fixed windows of ``window_s``: the first ``burst`` of each window pass."""

    def __init__(self, burst: int, window_s: float) -> None:
        self.burst = burst
        self.window_s = window_s
        self.started = float("-inf")
        self.passed = 0
        self.suppressed = 0

    def admit(self, now: float) -> tuple[bool, int]:
        """Whether a record at ``now`` passes, and how many were dropped in the window that it closed (0 if
        it closed none)."""
        closed = 0
        if now - self.started >= self.window_s:
            closed = self.take_suppressed()
            self.started = now
            self.passed = 0
        if self.passed >= self.burst:
            self.suppressed += 1
            return False, closed
        self.passed += 1
        return True, closed

    def take_suppressed(self) -> int:
        """How many were dropped since the last call, counted from zero again."""
        count, self.suppressed = self.suppressed, 0
        return count


class RepeatedMessageFilter(logging.Filter):
    """Passes at most ``burst`` records per (logger, level, format string) per ``window_s`` seconds."""

    def __init__(self, burst: int = DEFAULT_BURST, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.msg if isinstance(record.msg, str) else type(record.msg).__name__)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(self.burst, self.window_s)
            passed, earlier = window.admit(now)
        if passed and earlier:
            note = f" [{earlier} similar message(s) suppressed in the previous {self.window_s:.0f} s]"
            record.msg = f"{record.getMessage()}{note}"
            record.args = None
        return passed


class LimitedWarnings:
    """One kind of warning (``what``, for the summary line) of ``logger``, at most ``burst`` a window, the rest
    counted and summed up in one line when the window is over (at the next warning, or at ``flush``). Used by one
    thread only."""

    def __init__(self, logger: logging.Logger, what: str, burst: int = 10, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._what = what
        self._window = _Window(burst, window_s)
        self._clock = clock

    def warning(self, message: str, *args: object) -> None:
        passed, earlier = self._window.admit(self._clock())
        self._summarise(earlier)
        if passed:
            self._logger.warning(message, *args, stacklevel=2)  # where the caller warned, not here

    def flush(self) -> None:
        """Log how many warnings were left out since the last summary, if any."""
        self._summarise(self._window.take_suppressed())

    def _summarise(self, left_out: int) -> None:
        if left_out:
            self._logger.warning("%d more %s, not logged one by one (at most %d a %.0f s)", left_out, self._what,
                                 self._window.burst, self._window.window_s)


def configure_logging(level: str | int, *, burst: int = DEFAULT_BURST, window_s: float = DEFAULT_WINDOW_S) -> None:
    """Log to stderr in the services' format, with repeated messages rate-limited.

    Like ``logging.basicConfig``, does nothing when the root logger already has
    handlers (an embedding application, or pytest when a CLI's ``main`` runs in
    a test): their output is theirs to filter.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RepeatedMessageFilter(burst, window_s))
    logging.basicConfig(level=level, handlers=[handler])
