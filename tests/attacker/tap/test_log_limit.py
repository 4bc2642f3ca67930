"""``LimitedLog``: the relay tap's warnings that a client can cause one per connection, at most a few a minute and
the rest counted, so that a hostile client opening connection after connection cannot flood the log."""

from __future__ import annotations

import logging

import pytest

from attacker.tap.log_limit import LimitedLog


def test_past_the_first_few_a_window_warnings_are_counted_and_summed_up_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = LimitedLog(logging.getLogger("limited"), "things", per_window=3, window_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="limited"):
        for i in range(10):
            log.warning("thing %d", i)
        now[0] = 61.0
        log.warning("thing %d", 10)
        log.warning("thing %d", 11)
        log.flush()
        log.flush()
    assert [record.getMessage() for record in caplog.records] == [
        "thing 0", "thing 1", "thing 2",
        "7 more things, not logged one by one (at most 3 a 60 s)",
        "thing 10", "thing 11",
    ]
