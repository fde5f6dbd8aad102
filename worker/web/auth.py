"""Admin authentication: a bearer token (or HTTP basic credentials) compared in constant time."""

from __future__ import annotations

import base64
import hmac


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def is_authorized(authorization: str | None, settings) -> bool:
    """True for `Bearer <ADMIN_TOKEN>`, or `Basic` with DASHBOARD_USER/PASSWORD (or any user + token)."""
    if not authorization or len(authorization) > 4096:
        return False
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return _same(credentials, settings.admin_token)
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if settings.dashboard_user and settings.dashboard_password:
            user_ok = _same(user, settings.dashboard_user)
            password_ok = _same(password, settings.dashboard_password)
            if user_ok and password_ok:
                return True
        return _same(password, settings.admin_token)
    return False
