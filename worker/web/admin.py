"""The admin HTTP API: POST /payment-links (support asks Stripe's payment page for an owner).

Authorization: `Bearer <ADMIN_TOKEN>` (worker.web.auth.is_authorized, constant time) -> else 401.
Body: {"invoice": "in_..."} or {"customer": "cus_..."}, optional "requested_by" and "note".
Answers 202 {"id" (when one), "ids", "requests": [{"id", "invoice"}]}; 400 unknown invoice,
already paid, malformed, or a body naming any recipient address; 429 over the daily limit per
invoice; 413 over 16 KiB. An `Idempotency-Key` header makes a retried request the same request.
Nothing is processed here: rows are written and the job is enqueued after commit.
"""

from __future__ import annotations

import json

import falcon
import structlog

from worker.web.auth import is_authorized
from worker.infra.db import DatabaseUnavailable
from worker.intake.event_store import storable
from worker.stripe.payment_links import PaymentLinkRefused, request_links
from worker.web.http_util import json_error, read_body

MAX_ADMIN_BODY_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY = 255
log = structlog.get_logger("worker.web.admin")


class PaymentLinks:
    """POST /payment-links."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not is_authorized(req.get_header("Authorization"), self.runtime.settings):
            resp.set_header("WWW-Authenticate", 'Bearer realm="dunning"')
            log.info("payment_link.unauthorized")
            return json_error(resp, falcon.HTTP_401, "missing or wrong admin token")
        raw = read_body(req, MAX_ADMIN_BODY_BYTES)
        try:
            body = storable(json.loads(raw.decode("utf-8"))) if raw.strip() else None
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deeply
            return json_error(resp, falcon.HTTP_400, "the body is not valid JSON")
        key = (req.get_header("Idempotency-Key") or "").strip() or None
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
            return json_error(resp, falcon.HTTP_400, f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY}")
        try:
            created = request_links(self.runtime, body, idempotency_key=key)
        except PaymentLinkRefused as exc:
            log.info("payment_link.refused", status=exc.status, reason=exc.message)
            if exc.retry_after:
                resp.set_header("Retry-After", str(exc.retry_after))
            return json_error(resp, falcon.code_to_http_status(exc.status), exc.message)
        except DatabaseUnavailable:
            resp.set_header("Retry-After", "30")
            return json_error(resp, falcon.HTTP_503, "database unavailable; retry later")
        resp.status = falcon.HTTP_202
        resp.media = {"id": created[0]["id"] if len(created) == 1 else None,
                      "ids": [c["id"] for c in created], "requests": created, "status": "requested"}
