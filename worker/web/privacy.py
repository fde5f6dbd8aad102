"""The admin HTTP API for erasure: POST /customers/{id}/erase (same admin token as /payment-links).

Authorization: `Bearer <ADMIN_TOKEN>` -> else 401. Body: {"reason": "...", optional
"requested_by": "..."}. Answers 200 {"customer", "erased_at", "already_erased", "cases_closed",
"rows"}; 400 without a reason or a bad body; 404 for a customer we hold nothing about; 503 when
the database is down. The erasure is done before the answer (it is not queued).
"""

from __future__ import annotations

import json
import re

import falcon
import structlog

from worker.web.auth import is_authorized
from worker.infra.db import DatabaseUnavailable
from worker.privacy.erasure import ErasureRefused, UnknownCustomer, erase_customer
from worker.web.http_util import json_error, read_body

MAX_BODY_BYTES = 16 * 1024
CUSTOMER_ID_RE = re.compile(r"^cus_[A-Za-z0-9_]{1,250}$")
log = structlog.get_logger("worker.web.privacy")


class CustomerErase:
    """POST /customers/{customer_id}/erase."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response, customer_id: str) -> None:
        if not is_authorized(req.get_header("Authorization"), self.runtime.settings):
            resp.set_header("WWW-Authenticate", 'Bearer realm="dunning"')
            log.info("erasure.unauthorized")
            return json_error(resp, falcon.HTTP_401, "missing or wrong admin token")
        if not CUSTOMER_ID_RE.match(customer_id):
            return json_error(resp, falcon.HTTP_400, "the path must name a Stripe customer id (cus_...)")
        raw = read_body(req, MAX_BODY_BYTES)
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError, RecursionError):
            return json_error(resp, falcon.HTTP_400, "the body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("reason"), str) \
                or not isinstance(body.get("requested_by", ""), str):
            return json_error(resp, falcon.HTTP_400, 'the body must be {"reason": "...", "requested_by": "..."}')
        who = "api:" + (" ".join(body.get("requested_by", "").split())[:100] or "admin")
        try:
            result = erase_customer(self.runtime, customer_id, requested_by=who, reason=body["reason"])
        except ErasureRefused as exc:
            return json_error(resp, falcon.HTTP_400, str(exc))
        except UnknownCustomer as exc:
            return json_error(resp, falcon.HTTP_404, str(exc))
        except DatabaseUnavailable:
            resp.set_header("Retry-After", "30")
            return json_error(resp, falcon.HTTP_503, "database unavailable; retry later")
        resp.status = falcon.HTTP_200
        resp.media = {"customer": customer_id, "erased_at": result["erasure"]["erased_at"].isoformat() + "Z",
                      "already_erased": result["already_erased"], "cases_closed": result["cases_closed"],
                      "rows": result["rows"]}
