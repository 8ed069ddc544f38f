"""Who may see the console: the admin token, as a Bearer header or as a signed session cookie.

A browser cannot send ``Authorization: Bearer`` when it navigates, so the console's login form
takes the admin token once (``POST /admin/console/login``) and answers with a cookie that holds
an expiry and an HMAC of it keyed by the token's SHA-256 (``HttpOnly; SameSite=Strict;
Path=/admin``, ``Secure`` over TLS). The token itself never travels again, never sits in a URL
(access logs), and rotating the token ends every session::

    cookie = session_cookie(app[ADMIN_TOKEN_DIGEST], now=time.time())   # "1733345678.3f0a..."
    allowed(request)     # True: a valid Bearer token or session cookie; comparisons constant-time
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web

from gateway.admin import ADMIN_TOKEN_DIGEST

__all__ = ["COOKIE", "SESSION_S", "allowed", "session_cookie", "token_matches"]

COOKIE = "paychan_console"
SESSION_S = 12 * 3600  # a session lasts this long; then the form asks for the token again


def _mac(digest: bytes, expires: int) -> str:
    return hmac.new(digest, f"paychan-console:{expires}".encode(), hashlib.sha256).hexdigest()


def session_cookie(digest: bytes, *, now: float) -> str:
    """The cookie value for a session that ends ``SESSION_S`` after ``now``."""
    expires = int(now) + SESSION_S
    return f"{expires}.{_mac(digest, expires)}"


def token_matches(request: web.Request, given: str) -> bool:
    """Whether ``given`` is the admin token (digest to digest: the time says nothing)."""
    given_digest = hashlib.sha256(given.strip().encode()).digest()
    return hmac.compare_digest(given_digest, request.app[ADMIN_TOKEN_DIGEST])


def allowed(request: web.Request) -> bool:
    """A valid ``Authorization: Bearer`` admin token, or an unexpired session cookie."""
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return token_matches(request, given)
    raw = request.cookies.get(COOKIE, "")
    expires_text, _, mac = raw.partition(".")
    if not expires_text.isdigit() or not mac:
        return False
    expires = int(expires_text)
    good = hmac.compare_digest(mac.encode(), _mac(request.app[ADMIN_TOKEN_DIGEST], expires).encode())
    return good and expires > time.time()
