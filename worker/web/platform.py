"""The platform's read-only pull API: GET /platform/accounts[/{id}[/notices]].

Authorization: `Bearer <PLATFORM_API_TOKEN>` only (compared in constant time) -> else 401; with
no PLATFORM_API_TOKEN configured every request is 401. It is a separate token from ADMIN_TOKEN
on purpose: these resources only read (they have no POST), and the platform token is refused by
every route that acts (payment links, dashboard), which check the admin token alone.
Answers are JSON; errors are `{"error": "..."}` (400 bad parameter, 401, 404 unknown account,
503 database down). The shapes are in the OpenAPI document (worker/web/openapi.json).
"""

from __future__ import annotations

import hmac

import falcon
import structlog

from worker.web import platform_api
from worker.infra.db import DatabaseUnavailable
from worker.web.http_util import json_error

log = structlog.get_logger("worker.web.platform")


def is_platform(authorization: str | None, settings) -> bool:
    """True only for `Bearer <PLATFORM_API_TOKEN>` (never when no token is configured)."""
    token = settings.platform_api_token
    if not token or not authorization or len(authorization) > 4096:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), token.encode("utf-8"))


class _PlatformResource:
    def __init__(self, runtime):
        self.runtime = runtime

    def _answer(self, req: falcon.Request, resp: falcon.Response, read) -> None:
        if not is_platform(req.get_header("Authorization"), self.runtime.settings):
            resp.set_header("WWW-Authenticate", 'Bearer realm="dunning platform"')
            log.info("platform_api.unauthorized", path=req.path)
            return json_error(resp, falcon.HTTP_401, "missing or wrong platform token")
        try:
            resp.media = read()
        except platform_api.BadRequest as exc:
            return json_error(resp, falcon.HTTP_400, str(exc))
        except platform_api.NotFound as exc:
            return json_error(resp, falcon.HTTP_404, str(exc))
        except DatabaseUnavailable:
            resp.set_header("Retry-After", "30")
            return json_error(resp, falcon.HTTP_503, "database unavailable; retry later")


class PlatformAccounts(_PlatformResource):
    """GET /platform/accounts?status=&cursor=&limit=: a page of accounts, for a reconciliation sweep."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._answer(req, resp, lambda: platform_api.list_accounts(
            self.runtime.db, req.get_param("status") or None, req.get_param("cursor"),
            platform_api.parse_limit(req.get_param("limit"))))


class PlatformAccount(_PlatformResource):
    """GET /platform/accounts/{account_id}: status, dates, open invoices, last notice seq."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        self._answer(req, resp, lambda: platform_api.account(self.runtime.db, account_id))


class PlatformNotices(_PlatformResource):
    """GET /platform/accounts/{account_id}/notices?after=SEQ&limit=: the notice feed to replay."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        self._answer(req, resp, lambda: platform_api.notice_feed(
            self.runtime.db, account_id, platform_api.parse_after(req.get_param("after")),
            platform_api.parse_limit(req.get_param("limit"))))


def add_routes(app: falcon.App, runtime) -> None:
    """Register the pull API on the app (one line in worker.web.app.create_app)."""
    app.add_route("/platform/accounts", PlatformAccounts(runtime))
    app.add_route("/platform/accounts/{account_id}", PlatformAccount(runtime))
    app.add_route("/platform/accounts/{account_id}/notices", PlatformNotices(runtime))
