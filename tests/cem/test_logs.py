"""Repeated log messages are capped, so a flood of hostile requests cannot become a flood of log lines."""

from __future__ import annotations

import logging

import pytest

from attacker.tap.metrics import COUNTER_HELP
from attacker.tap.recorder import RecorderStats
from cem.logs import LimitedWarnings, RepeatedMessageFilter


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def emit(log_filter: RepeatedMessageFilter, msg: str, *args: object, name: str = "cloud") -> logging.LogRecord | None:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    return record if log_filter.filter(record) else None


def test_each_message_passes_burst_times_per_window_then_reports_what_it_dropped() -> None:
    """Issue 10 item 7: every refused request logged a line, at any rate a caller chose."""
    clock = ManualClock()
    log_filter = RepeatedMessageFilter(burst=3, window_s=60.0, clock=clock)
    passed = [emit(log_filter, "request refused with %s: %s", "NOT_FOUND", i) for i in range(1000)]
    assert sum(record is not None for record in passed) == 3
    assert emit(log_filter, "another message %d", 1) is not None  # other messages have their own budget
    assert emit(log_filter, "request refused with %s: %s", "X", 0, name="tap") is not None  # and other loggers
    clock.now = 61.0
    record = emit(log_filter, "request refused with %s: %s", "NOT_FOUND", 1000)
    assert record is not None
    assert record.getMessage() == ("request refused with NOT_FOUND: 1000 "
                                   "[997 similar message(s) suppressed in the previous 60 s]")


def test_every_recorder_counter_is_a_metric() -> None:
    assert set(COUNTER_HELP) == set(RecorderStats.__dataclass_fields__)


def test_limited_warnings_past_the_burst_are_counted_and_summed_up_once(caplog: pytest.LogCaptureFixture) -> None:
    """The relay tap's warnings that a client can cause once per connection: a hostile client opening connection
    after connection gets a few lines a minute and one summary, also at ``flush`` (when the relay stops)."""
    clock = ManualClock()
    log = LimitedWarnings(logging.getLogger("limited"), "things", burst=3, window_s=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="limited"):
        for i in range(10):
            log.warning("thing %d", i)
        clock.now = 61.0
        log.warning("thing %d", 10)
        for i in range(11, 15):
            log.warning("thing %d", i)
        log.flush()
        log.flush()
    assert [record.getMessage() for record in caplog.records] == [
        "thing 0", "thing 1", "thing 2",
        "7 more things, not logged one by one (at most 3 a 60 s)",
        "thing 10", "thing 11", "thing 12",
        "2 more things, not logged one by one (at most 3 a 60 s)",
    ]
