"""Fixtures of the console tests: a logged-in client of the shared audit service (tests/attacker/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from console_helpers import console_session
from service_helpers import AuditService


@pytest.fixture()
def console(service: AuditService) -> Iterator[httpx.Client]:
    with console_session(service) as client:
        yield client
