"""Standard Webhooks signing for platform notices (https://www.standardwebhooks.com).

Why our own twenty lines and not the `standardwebhooks` package: signing is one HMAC, and the
package pulls an HTTP client and date libraries into the runtime; the tests verify every notice
with the package's own verifier, so the two cannot drift apart unnoticed.

The specification: `webhook-id` (the notice's id, the receiver's dedupe key), `webhook-timestamp`
(unix seconds of this try) and `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`,
several signatures separated by spaces (one per configured secret, so a receiver can rotate).
A secret written `whsec_<base64>` is keyed by the decoded bytes, as the specification's libraries
do; a plain secret (no prefix) is keyed by its UTF-8 bytes (a receiver passes those bytes to
`Webhook(secret.encode())`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

PREFIX = "whsec_"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class BadSecret(ValueError):
    """Raised when a `whsec_` secret is not valid base64 (or decodes to nothing)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a configured secret: decoded `whsec_<base64>`, else the UTF-8 bytes."""
    if not secret.startswith(PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(PREFIX):].rstrip("=")
    try:  # unpadded base64 is accepted, as the specification's own libraries accept it
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadSecret("a whsec_ secret must be base64 after the prefix") from None
    if not key:
        raise BadSecret("a whsec_ secret must not be empty after the prefix")
    return key


def signature(msg_id: str, timestamp: int, body: str, secret: str) -> str:
    """One `v1,<base64>` signature of `body` under `secret`."""
    content = f"{msg_id}.{timestamp}.{body}".encode("utf-8")
    mac = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def headers(msg_id: str, body: str, secrets: tuple[str, ...] | list[str],
            timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one try of `body` (signed with every secret)."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(signature(msg_id, timestamp, body, s) for s in secrets),
    }
