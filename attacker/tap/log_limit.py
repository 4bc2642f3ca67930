"""Warnings a client can cause one per connection, rate-limited: the relay tap logs each connection whose capture
it gives up, and a hostile client opening connection after connection must not flood the log (nor spend the event
loop's time on it). The first few a minute are logged as they come; the rest are counted and summed up in one line
once the minute is over (at the next warning, or at ``flush``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PER_WINDOW = 10  # warnings logged one by one per window
WINDOW_S = 60.0


class LimitedLog:
    """One kind of warning (``what``, for the summary line) of ``logger``, at most ``per_window`` a window. Used by
    one thread only."""

    def __init__(self, logger: logging.Logger, what: str, per_window: int = PER_WINDOW, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._what = what
        self._per_window = per_window
        self._window_s = window_s
        self._clock = clock
        self._window_end = float("-inf")
        self._logged = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now >= self._window_end:
            self.flush()
            self._window_end = now + self._window_s
            self._logged = 0
        if self._logged < self._per_window:
            self._logged += 1
            self._logger.warning(message, *args)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """Log how many warnings were left out since the last summary, if any."""
        if self._suppressed:
            self._logger.warning("%d more %s, not logged one by one (at most %d a %.0f s)", self._suppressed,
                                 self._what, self._per_window, self._window_s)
            self._suppressed = 0
