"""Who may use the console, and proof that a form was posted from it.

Credentials (any one): `Authorization: Bearer <ADMIN_TOKEN>`, HTTP basic as /dashboard accepts
(worker.web.auth), or the `console_session` cookie the login form sets: "<user>.<expires>.<HMAC>",
signed with a key derived from ADMIN_TOKEN (rotating the token signs everyone out).

CSRF: every console page sets a random `console_csrf` cookie (HttpOnly, SameSite=Strict); each
form carries HMAC(key, that cookie) and a POST whose token does not match is refused (403).
Another site can neither read the cookie nor compute the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

from worker.web.auth import is_authorized

SESSION_COOKIE = "console_session"
CSRF_COOKIE = "console_csrf"
SESSION_SECONDS = 8 * 3600
COOKIE_PATH = "/console"


def _key(settings, purpose: str) -> bytes:
    return hmac.new(settings.admin_token.encode(), f"dunning-console:{purpose}".encode(), hashlib.sha256).digest()


def _sign(settings, purpose: str, message: str) -> str:
    return hmac.new(_key(settings, purpose), message.encode(), hashlib.sha256).hexdigest()


def make_session(settings, user: str, now: float | None = None) -> str:
    encoded = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{encoded}.{expires}.{_sign(settings, 'session', f'{encoded}.{expires}')}"


def session_user(settings, cookie: str | None, now: float | None = None) -> str | None:
    """The signed-in user of a session cookie, or None (missing, forged or expired)."""
    if not cookie or len(cookie) > 1024 or cookie.count(".") != 2:
        return None
    encoded, expires, signature = cookie.split(".")
    if not hmac.compare_digest(signature, _sign(settings, "session", f"{encoded}.{expires}")):
        return None
    try:
        if int(expires) < (now or time.time()):
            return None
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def header_actor(authorization: str | None, settings) -> str | None:
    """The actor named by valid Authorization credentials: 'admin-token' or the basic user."""
    if not is_authorized(authorization, settings):
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "basic":
        user = base64.b64decode(credentials.strip()).decode("utf-8", "replace").partition(":")[0]
        return user or "basic"
    return "admin-token"


def check_login(settings, user: str, password: str) -> bool:
    """The login form accepts what HTTP basic accepts."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return bool(user) and ":" not in user and is_authorized(f"Basic {basic}", settings)


def new_csrf_nonce() -> str:
    return os.urandom(18).hex()


def csrf_token(settings, nonce: str) -> str:
    return _sign(settings, "csrf", nonce)


def csrf_ok(settings, nonce: str | None, token: str | None) -> bool:
    if not nonce or not token or len(nonce) > 128 or len(token) > 128:
        return False
    return hmac.compare_digest(token, csrf_token(settings, nonce))
