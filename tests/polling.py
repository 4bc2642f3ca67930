"""Waiting on a condition instead of on the clock (imported by name from every test folder).

A test that needs something to have happened polls for it with ``wait_for``; the
timeout only turns a hang into a clear failure and is never what a test asserts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Call ``predicate`` until it returns something truthy, and return that; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
