"""The audit service's outer gate: the token and a body-size cap, checked before any body is read.

The console's pages (``/console``) are the exception to the token: they check
their own session cookie (``attacker.service.console.web``).

FastAPI reads and parses a request body before it runs route dependencies, so the
bearer-token dependency alone let an unauthenticated client make the service read
(and hold) a body of any size: a 200 MB POST cost 12 s and ~610 MB of memory, and
unparseable JSON without a token got 422 instead of 401. This pure ASGI middleware
answers 401 from the headers alone, 413 when ``Content-Length`` is past
``max_body_bytes`` and 411 for a chunked body (it has no length to check), so
nothing an unauthenticated or oversized request sends is ever buffered; the
HTTP server itself holds a body to its declared length. The route dependency
stays as a second check and documents the scheme in the OpenAPI schema.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from attacker.service.errors import DETAIL_UNAUTHORIZED

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/healthz"})
# The audit console (attacker.service.console) authenticates its own requests with a session cookie
# derived from the same token; the body cap below still applies to it.
COOKIE_AUTH_PREFIX = "/console"
DEFAULT_MAX_BODY_BYTES = 64 * 1024  # an audit request is a few hundred bytes of JSON
DETAIL_BODY_TOO_LARGE = "request body too large"
DETAIL_LENGTH_REQUIRED = "a request body needs a Content-Length"


class RequestGuard:
    """ASGI middleware: 401 without the bearer token (``token`` None = auth off), 413 past the body cap."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.expected = None if token is None else token.encode()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not _cookie_authenticated(scope["path"]) and scope["path"] not in PUBLIC_PATHS \
                and not self._authorised(headers.get(b"authorization", b"")):
            await _respond(send, 401, DETAIL_UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" in headers:
            await _respond(send, 411, DETAIL_LENGTH_REQUIRED)  # a chunked body could only be capped mid-read
            return
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _respond(send, 413, DETAIL_BODY_TOO_LARGE)
            return
        await self.app(scope, receive, send)  # the server enforces that the body matches Content-Length

    def _authorised(self, header: bytes) -> bool:
        """``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 7235), compared in constant time."""
        if self.expected is None:
            return True
        scheme, _, presented = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self.expected)


def _cookie_authenticated(path: str) -> bool:
    return path == COOKIE_AUTH_PREFIX or path.startswith(COOKIE_AUTH_PREFIX + "/")


async def _respond(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
