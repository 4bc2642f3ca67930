"""Service logging: one format, and a cap on how often one message can repeat.

A remote caller decides how often a service logs: every refused request logs a
line, and a flood of hostile requests would otherwise become a flood of log
lines (disk, log shipping, and the one real error drowned among them). The
filter lets the first ``burst`` records of each message (same logger, level and
format string) through per ``window_s``, drops the rest, and says how many it
dropped on the first record of that message after the window.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_BURST = 20
DEFAULT_WINDOW_S = 60.0


@dataclass
class _Window:
    started: float
    passed: int = 0
    suppressed: int = 0


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
            if window is None or now - window.started >= self.window_s:
                earlier = window.suppressed if window is not None else 0
                window = self._windows[key] = _Window(started=now)
                if earlier:
                    note = f" [{earlier} similar message(s) suppressed in the previous {self.window_s:.0f} s]"
                    record.msg = f"{record.getMessage()}{note}"
                    record.args = None
            if window.passed >= self.burst:
                window.suppressed += 1
                return False
            window.passed += 1
            return True


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
