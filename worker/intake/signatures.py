"""Stripe-style webhook signatures: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

Incoming Stripe webhooks are verified with stripe-python's own verifier (every configured secret
is tried, for rotation); our notices to the platform are signed with the same scheme, so the
platform can verify them with known code.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from stripe import SignatureVerificationError, WebhookSignature  # bound once: stripe's lazy
# attributes call import_module on every access

TOLERANCE_SECONDS = 300
# ASCII digits only, at most 12 of them: str.isdigit() accepts '²' and int() refuses 4,400 digits,
# and both reached int() as a 500.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(ValueError):
    """Raised when a Stripe-Signature header is missing, malformed, forged, stale or future-dated."""


def _timestamp(header: str) -> int:
    stamps = [item.split("=", 1)[1] for item in header.split(",")
              if item.strip().startswith("t=") and "=" in item]
    if len(stamps) != 1 or not _TIMESTAMP.fullmatch(stamps[0].strip()):
        raise SignatureError("Stripe-Signature must carry exactly one numeric t= timestamp")
    return int(stamps[0])


def verify_stripe_signature(payload: str, header: str | None, secrets: tuple[str, ...],
                            tolerance: int = TOLERANCE_SECONDS, now: float | None = None) -> None:
    """Raise SignatureError unless one of `secrets` signed `payload` within `tolerance` seconds."""
    if not header or not header.strip():
        raise SignatureError("missing Stripe-Signature header")
    if len(header) > 8192:
        raise SignatureError("Stripe-Signature header too long")
    now = time.time() if now is None else now
    stamp = _timestamp(header)
    if stamp > now + tolerance:
        raise SignatureError("Stripe-Signature timestamp is in the future")
    if stamp < now - tolerance:
        raise SignatureError("Stripe-Signature timestamp is outside the tolerance zone")
    for secret in secrets:
        try:
            WebhookSignature.verify_header(payload, header, secret, tolerance)
            return
        except (SignatureVerificationError, ValueError, TypeError, UnicodeError):
            continue  # a malformed header is a mismatch, never a 500
    raise SignatureError("no signature matches the payload for any configured secret")


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The header value for `payload`: used for platform notices and by the tests."""
    return sign_all(payload, (secret,), timestamp)


def sign_all(payload: str, secrets: tuple[str, ...] | list[str], timestamp: int | None = None) -> str:
    """`t=<unix>,v1=<hex>,v1=<hex>...`: one v1 per secret (the whole secret string is the key, as
    Stripe does), so a receiver holding any one of several rotated secrets verifies it."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    macs = [hmac.new(s.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])
