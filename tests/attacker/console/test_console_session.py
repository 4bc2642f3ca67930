"""The console's session cookie, CSRF tokens, login redirects and origin check: the security core, as units, then
over real HTTP against a running cem-audit (login, cookie flags, logout, a service without auth)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from console_helpers import csrf_token
from service_helpers import TOKEN, AuditService, start_service
from starlette.requests import Request

from attacker.service.console.session import COOKIE_NAME, SESSION_LIFETIME_S, SessionKeys
from attacker.service.console.web import safe_next, same_origin

NOW = 1_800_000_000.0


def test_a_minted_session_is_valid_until_it_expires() -> None:
    keys = SessionKeys.from_token(TOKEN)
    cookie = keys.mint(now=NOW)
    assert keys.valid(cookie, now=NOW) and keys.valid(cookie, now=NOW + SESSION_LIFETIME_S - 1)
    assert not keys.valid(cookie, now=NOW + SESSION_LIFETIME_S)


@pytest.mark.parametrize("tamper", [
    lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # another MAC
    lambda c: c.replace("v1.", "v2.", 1),
    lambda c: "v1.9999999999." + c.split(".", 2)[2],  # a later expiry under the old MAC
    lambda c: "",
    lambda c: "garbage",
    lambda c: c + "." + "a" * 300,  # too long
])
def test_a_tampered_cookie_is_refused(tamper: Callable[[str], str]) -> None:
    keys = SessionKeys.from_token(TOKEN)
    assert not keys.valid(tamper(keys.mint(now=NOW)), now=NOW)


def test_a_new_token_ends_every_session_and_csrf_tokens_bind_to_the_session() -> None:
    keys, rotated = SessionKeys.from_token(TOKEN), SessionKeys.from_token(TOKEN + "-rotated")
    cookie = keys.mint(now=NOW)
    assert not rotated.valid(cookie, now=NOW)
    token = keys.csrf_token(cookie)
    assert keys.csrf_valid(cookie, token)
    assert not keys.csrf_valid(keys.mint(now=NOW), token)  # another session's form
    assert not keys.csrf_valid(cookie, "") and not keys.csrf_valid(cookie, None)
    assert not rotated.csrf_valid(cookie, token)
    assert keys.token_matches(TOKEN) and not keys.token_matches(TOKEN[:-1]) and not keys.token_matches("")


def test_without_a_token_every_request_is_a_session_but_forms_still_need_csrf() -> None:
    keys = SessionKeys.from_token(None)
    assert not keys.auth_required and keys.valid(None) and not keys.token_matches("")
    assert keys.csrf_valid(None, keys.csrf_token(None)) and not keys.csrf_valid(None, "0" * 64)


@pytest.mark.parametrize(("target", "expected"), [
    ("/console/audits?status=running", "/console/audits?status=running"),
    ("", "/console/"),
    ("https://evil.example/console", "/console/"),
    ("//evil.example/console", "/console/"),
    ("/\\evil.example", "/console/"),
    ("/console\\..\\evil", "/console/"),
    ("/v1/audits", "/console/"),
    ("javascript:alert(1)", "/console/"),
])
def test_after_login_only_console_paths_of_this_site(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def _request(headers: dict[str, str], host: str = "127.0.0.1:8000", scheme: str = "http") -> Request:
    raw = [(b"host", host.encode())] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "scheme": scheme, "path": "/console/audits",
                    "query_string": b"", "headers": raw, "server": ("127.0.0.1", 8000)})


@pytest.mark.parametrize(("headers", "host", "scheme", "same"), [
    ({}, "127.0.0.1:8000", "http", True),  # no header: the CSRF token decides
    ({"Origin": "http://127.0.0.1:8000"}, "127.0.0.1:8000", "http", True),
    ({"Origin": "http://127.0.0.1:8001"}, "127.0.0.1:8000", "http", False),  # another port: another origin
    ({"Origin": "null"}, "127.0.0.1:8000", "http", False),
    ({"Referer": "http://127.0.0.1:8000/console/audits"}, "127.0.0.1:8000", "http", True),
    ({"Referer": "http://evil.example/console/audits"}, "127.0.0.1:8000", "http", False),
    ({"Origin": "https://Audit.Example"}, "audit.example:443", "https", True),  # default port, host case
    ({"Origin": "http://127.0.0.1:notaport"}, "127.0.0.1:8000", "http", False),
])
def test_the_origin_check(headers: dict[str, str], host: str, scheme: str, same: bool) -> None:
    assert same_origin(_request(headers, host, scheme)) is same


def test_login_sets_a_strict_http_only_console_cookie_and_logout_clears_it(service: AuditService) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        wrong = client.post("/console/login", data={"token": TOKEN + "x", "next": "/console/models"})
        assert wrong.status_code == 401 and "not the service's token" in wrong.text
        assert COOKIE_NAME not in client.cookies
        response = client.post("/console/login", data={"token": f" {TOKEN} ", "next": "/console/models"})
        assert response.status_code == 303 and response.headers["location"] == "/console/models"
        flags = {part.strip().lower() for part in response.headers["set-cookie"].split(";")}
        assert {"httponly", "samesite=strict", "path=/console"} <= flags
        page = client.get("/console/models")
        assert page.status_code == 200
        assert client.post("/console/logout", data={}).status_code == 403  # a form without its CSRF token
        out = client.post("/console/logout", data={"csrf_token": csrf_token(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert COOKIE_NAME not in client.cookies
        assert client.get("/console/models").status_code == 303


def test_an_expired_form_goes_back_to_the_page_it_was_on_after_login(service: AuditService) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        response = client.post("/console/audits/some-id/cancel", data={"csrf_token": "0" * 64},
                               headers={"Referer": f"{service.url}/console/audits/some-id"})
        assert response.status_code == 303
        assert response.headers["location"] == "/console/login?next=%2Fconsole%2Faudits%2Fsome-id"


@pytest.fixture(scope="module")
def open_service(bundles_dir: Path, captures_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[AuditService]:
    state = tmp_path_factory.mktemp("open-audit")
    running = start_service(state / "audit.db", bundles_dir, captures_dir, state / "service.log",
                            "--insecure-no-auth", token=None)
    yield running
    running.stop()


@pytest.mark.e2e
def test_without_auth_the_console_needs_no_login_but_forms_still_need_csrf(open_service: AuditService) -> None:
    with httpx.Client(base_url=open_service.url, timeout=30) as client:
        assert client.get("/console/login").headers["location"] == "/console/"
        page = client.get("/console/audits")
        assert page.status_code == 200 and "Log out" not in page.text
        before = client.get("/v1/audits").json()["audits"]
        refused = client.post("/console/audits", data={"bundle": "digits-tiny", "epochs": "1"})
        assert refused.status_code == 403
        assert client.get("/v1/audits").json()["audits"] == before
