"""Logging in and out, and the console's two static files: the only console routes without a session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from attacker.service.console.session import COOKIE_NAME, COOKIE_PATH, SESSION_LIFETIME_S
from attacker.service.console.web import (
    PREFIX,
    STATIC_DIR,
    ConsolePage,
    ConsoleRoute,
    FormRefused,
    Page,
    check_form,
    keys,
    safe_next,
    same_origin,
    session_value,
)

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
MAX_TOKEN_CHARS = 1024


def _login_form(request: Request, next_path: str, status_code: int = 200, failed: bool = False) -> HTMLResponse:
    page = Page(request, keys(request), None)
    return page.render("login.html", status_code=status_code, title="Log in", next_path=safe_next(next_path),
                       failed=failed)


@router.get("/login")
def login_form(request: Request, next_path: Annotated[str, Query(alias="next", max_length=2048)] = "") -> Response:
    if not keys(request).auth_required or keys(request).valid(session_value(request)):
        return RedirectResponse(safe_next(next_path), status_code=303)
    return _login_form(request, next_path)


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=MAX_TOKEN_CHARS)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=2048)] = "",
) -> Response:
    """Check the token (constant time) and set the session cookie: HttpOnly, SameSite=Strict, console path only."""
    session_keys = keys(request)
    if not same_origin(request):
        raise FormRefused()
    if not session_keys.auth_required:
        return RedirectResponse(safe_next(next_path), status_code=303)
    if not session_keys.token_matches(token.strip()):  # a pasted token's stray space, as the bearer guard allows
        return _login_form(request, next_path, status_code=401, failed=True)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(
        COOKIE_NAME, session_keys.mint(), max_age=SESSION_LIFETIME_S, path=COOKIE_PATH, httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(page: ConsolePage, csrf_token: Annotated[str, Form(max_length=128)] = "") -> Response:
    check_form(page, csrf_token)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """The stylesheet and the script, by name from a fixed list (no path ever joined from the request)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": "max-age=300"})
