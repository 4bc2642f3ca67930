"""The console's plumbing: templates, the session and CSRF checks, and its one error boundary.

Every console route is a ``ConsoleRoute``: it maps what a handler raises into a
page, once, for the whole console: no session -> 303 to the login form (with the
page to come back to), a refused form -> 403, a domain error (unknown audit,
unknown bundle, a finished audit to cancel) -> an error page with the API's
status and detail. Every console response also carries the security headers
(``SECURITY_HEADERS``): no framing, no inline scripts, no third-party anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from attacker.service.console.session import COOKIE_NAME, SessionKeys
from attacker.service.errors import ServiceError, to_service_error
from attacker.service.report import format_number
from cem.errors import CEMError

logger = logging.getLogger(__name__)

PREFIX = "/console"
TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV = (("audits", "Audits"), ("models", "Models"), ("captures", "Captures"), ("experiments", "Experiments"))


class LoginRequired(Exception):
    """No valid session cookie: the console answers with the login form."""


class FormRefused(Exception):
    """A state-changing request without this session's CSRF token, or from another origin."""


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "–"


def _percent(value: Any) -> str:
    return "–" if isinstance(value, bool) or not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(number=format_number, when=_when, percent=_percent)


def keys(request: Request) -> SessionKeys:
    return request.app.state.console_keys


def session_value(request: Request) -> str | None:
    return request.cookies.get(COOKIE_NAME)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a console path of this site only (never an open redirect)."""
    if not target:
        return PREFIX + "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX) or "\\" in target or target.startswith("//"):
        return PREFIX + "/"
    return target


@dataclass(frozen=True)
class Page:
    """What a console handler gets: the request, and a way to render a template into a response."""

    request: Request
    keys: SessionKeys
    session: str | None

    @property
    def csrf_token(self) -> str:
        return self.keys.csrf_token(self.session)

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        page = templates.get_template(template).render(
            prefix=PREFIX, nav=NAV, csrf_token=self.csrf_token, auth_required=self.keys.auth_required,
            path=self.request.url.path, **context,
        )
        return HTMLResponse(page, status_code=status_code)


def require_session(request: Request) -> Page:
    """The dependency of every page but login: a valid session cookie, or ``LoginRequired``."""
    session_keys = keys(request)
    value = session_value(request)
    if not session_keys.valid(value):
        raise LoginRequired()
    return Page(request, session_keys, value)


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the host lowercased and the scheme's default port made explicit."""
    scheme = scheme.lower()
    return scheme, (host or "").lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (``Origin``, else ``Referer``) than the
    one it was sent to (the ``Host`` the service sees: behind a proxy, the proxy must pass the public ``Host`` on).

    A missing header passes here: the CSRF token is the check that always applies.
    """
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed:
        return True
    parts = urlsplit(claimed)  # an opaque origin ("null") has no scheme or host, so it never matches
    try:
        claimed_port = parts.port
    except ValueError:  # a port that is not a number
        return False
    return _origin(parts.scheme, parts.hostname, claimed_port) == _origin(
        request.url.scheme, request.url.hostname, request.url.port)


def check_form(page: Page, csrf_token: str | None) -> None:
    """Refuse a state-changing form that is cross-origin or lacks this session's CSRF token."""
    if not same_origin(page.request) or not page.keys.csrf_valid(page.session, csrf_token):
        raise FormRefused()


ConsolePage = Annotated[Page, Depends(require_session)]


def _login_redirect(request: Request) -> RedirectResponse:
    """To the login form, then back: to this page for a GET; after a form (a session that expired meanwhile), to the
    console page the form was on, since the form's own URL may take no GET; nothing was changed either way."""
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        referer = urlsplit(request.headers.get("referer", ""))
        target = referer.path if same_origin(request) and referer.path.startswith(PREFIX) else f"{PREFIX}/audits"
    return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)


def _error_page(request: Request, status_code: int, title: str, detail: str) -> HTMLResponse:
    page = Page(request, keys(request), session_value(request))
    return page.render("error.html", status_code=status_code, title=title, detail=detail)


def _validation_text(exc: RequestValidationError | ValidationError) -> str:
    """Each refused field with pydantic's reason, one per line."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "form"))
        lines.append(f"{field or 'input'}: {error.get('msg', 'invalid')}")
    return "; ".join(lines) or "invalid input"


class ConsoleRoute(APIRoute):
    """A route whose exceptions become pages and whose responses carry ``SECURITY_HEADERS``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = _login_redirect(request)
            except FormRefused:
                response = _error_page(request, 403, "Form refused",
                                       "This form was not sent from a console page of this session (missing or "
                                       "wrong CSRF token, or another origin). Nothing was changed.")
            except (RequestValidationError, ValidationError) as exc:
                response = _error_page(request, 422, "Invalid input", _validation_text(exc))
            except CEMError as exc:
                error: ServiceError = to_service_error(exc)
                if error.status_code >= 500:
                    logger.warning("%s %s -> %d: %s", request.method, request.url.path, error.status_code, exc)
                response = _error_page(request, error.status_code, "Not possible", error.detail)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return console_handler
