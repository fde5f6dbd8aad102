"""Small pieces every HTTP resource shares: a bounded body reader and JSON errors.

`read_body(req, limit)` is the one way a route reads its body: it reads Content-Length and
chunked bodies alike (a chunked request has no Content-Length; Falcon's bounded_stream then
reads nothing, which silently emptied chunked webhooks) and refuses (413) anything over `limit`
while reading, never after. The web server (worker/web/server.py) has already received the
request whole, within WEB_READ_TIMEOUT and the 1 MiB cap; a route's own limit may be smaller.
"""

from __future__ import annotations

import falcon

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB: Stripe's events are far smaller
READ_CHUNK = 64 * 1024


def json_error(resp: falcon.Response, status: str, message: str) -> None:
    resp.status = status
    resp.media = {"error": message}


def _too_large(limit: int) -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(title="body too large", description=f"limit is {limit} bytes")


def is_chunked(req: falcon.Request) -> bool:
    return "chunked" in (req.get_header("Transfer-Encoding") or "").lower()


def read_body(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body (Content-Length or chunked), refusing (413) anything over `limit` as it reads."""
    if req.content_length is not None:
        if req.content_length > limit:
            raise _too_large(limit)
        stream = req.bounded_stream
    elif is_chunked(req):
        stream = req.stream  # the server de-chunks; it ends at the last chunk
    else:
        return b""
    parts, size = [], 0
    while size <= limit:
        part = stream.read(min(READ_CHUNK, limit + 1 - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        raise _too_large(limit)
    return b"".join(parts)
