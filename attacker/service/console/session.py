"""The console's session cookie and CSRF tokens, both derived from the service's bearer token.

Nothing is stored server-side: a session is ``v1.<expiry>.<nonce>.<mac>``, the
MAC an HMAC-SHA256 under a key derived from the bearer token, so a cookie is
only ever minted by someone who typed the token, and rotating the token (a
restart with a new ``CEM_AUDIT_TOKEN``) ends every session. The CSRF token of a
session is a second HMAC of the cookie value under a separate derived key: a
page of another origin can make the browser send the cookie (same-site ports
share it) but cannot read the token from our pages, so its forged form fails.

With ``--insecure-no-auth`` there is no token: the keys are random per process
and every request counts as logged in, but forms still need their CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "cem_console_session"
COOKIE_PATH = "/console"
SESSION_LIFETIME_S = 12 * 3600  # a working day; then the login form again
ANONYMOUS_SESSION = "anonymous"  # the session value CSRF tokens bind to when auth is off
VERSION = "v1"


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, b"cem-console:" + purpose, hashlib.sha256).digest()


@dataclass(frozen=True)
class SessionKeys:
    """The console's two keys; ``token`` None means auth is off (``--insecure-no-auth``)."""

    token: str | None
    session_key: bytes
    csrf_key: bytes

    @classmethod
    def from_token(cls, token: str | None) -> SessionKeys:
        secret = token.encode() if token is not None else secrets.token_bytes(32)
        return cls(token, _derive(secret, b"session"), _derive(secret, b"csrf"))

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    def token_matches(self, presented: str) -> bool:
        """The login form's check, in constant time."""
        return self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def _mac(self, payload: str) -> str:
        return hmac.new(self.session_key, payload.encode(), hashlib.sha256).hexdigest()

    def mint(self, now: float | None = None, lifetime_s: int = SESSION_LIFETIME_S) -> str:
        """A new session cookie value, valid for ``lifetime_s``."""
        expiry = int((time.time() if now is None else now) + lifetime_s)
        payload = f"{VERSION}.{expiry}.{secrets.token_hex(16)}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, value: str | None, now: float | None = None) -> bool:
        """Whether ``value`` is a cookie this service minted and that has not expired."""
        if not self.auth_required:
            return True
        if not value or len(value) > 256:
            return False
        payload, _, mac = value.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] != VERSION or not parts[1].isdigit():
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return False
        return int(parts[1]) > (time.time() if now is None else now)

    def csrf_token(self, session_value: str | None) -> str:
        """The CSRF token every form of this session carries."""
        bound = session_value if self.auth_required and session_value else ANONYMOUS_SESSION
        return hmac.new(self.csrf_key, bound.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, session_value: str | None, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            (presented or "").encode(), self.csrf_token(session_value).encode()
        )
