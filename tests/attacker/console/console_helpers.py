"""Log in to a running cem-audit's console over real HTTP, and read the CSRF token off its pages
(imported by name from tests/attacker/console/**)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from service_helpers import TOKEN, AuditService

CSRF_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def console_client(service: AuditService, token: str = TOKEN) -> httpx.Client:
    """An httpx client holding a console session of ``service`` (logged in through the login form)."""
    client = httpx.Client(base_url=service.url, timeout=30, follow_redirects=False)
    response = client.post("/console/login", data={"token": token, "next": "/console/audits"})
    assert response.status_code == 303, response.text
    assert "cem_console_session" in client.cookies
    return client


@contextmanager
def console_session(service: AuditService) -> Iterator[httpx.Client]:
    """``console_client`` closed at the end (the client is already open: it logged in, so no ``with`` on it)."""
    client = console_client(service)
    try:
        yield client
    finally:
        client.close()


def csrf_token(page_html: str) -> str:
    """The CSRF token a console page puts in its forms."""
    match = CSRF_FIELD.search(page_html)
    assert match is not None, "no csrf_token field on the page"
    return match.group(1)
