"""Small pieces every HTTP resource shares: a bounded body reader and JSON errors."""

from __future__ import annotations

import falcon

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB: Stripe's events are far smaller


def json_error(resp: falcon.Response, status: str, message: str) -> None:
    resp.status = status
    resp.media = {"error": message}


def read_body(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing (413) anything over `limit` before reading it all."""
    if req.content_length is not None and req.content_length > limit:
        raise falcon.HTTPContentTooLarge(title="body too large", description=f"limit is {limit} bytes")
    body = req.bounded_stream.read(limit + 1)
    if len(body) > limit:
        raise falcon.HTTPContentTooLarge(title="body too large", description=f"limit is {limit} bytes")
    return body
