"""The operators' HTTP pages: GET /metrics and the queue dashboard at /dashboard.

Both sit behind nothing but the network for /metrics (Prometheus scrapes it, and it carries
counts, never ids or addresses) and behind the admin credentials for the dashboard, which can
requeue and delete messages.
"""

from __future__ import annotations

import falcon
import structlog

from worker import metrics
from worker.auth import is_authorized

DASHBOARD_PREFIX = "/dashboard"
log = structlog.get_logger("worker.web_ops")


class Metrics:
    """GET /metrics: Prometheus text format, one view of web and worker processes plus the domain."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        body, content_type = metrics.render(self.runtime)
        resp.content_type = content_type
        resp.data = body


class RequireAdmin:
    """WSGI middleware: only admin credentials pass (Bearer ADMIN_TOKEN or HTTP basic).

    A browser gets 401 with `WWW-Authenticate: Basic`, so it asks for a user and password.
    """

    def __init__(self, app, settings, realm: str = "dunning dashboard"):
        self.app = app
        self.settings = settings
        self.realm = realm

    def __call__(self, environ, start_response):
        if is_authorized(environ.get("HTTP_AUTHORIZATION"), self.settings):
            return self.app(environ, start_response)
        log.info("dashboard.unauthorized", path=environ.get("PATH_INFO", ""))
        body = b"authentication required\n"
        start_response("401 Unauthorized", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'),
        ])
        return [body]


class LinkToConsole:
    """WSGI middleware: adds a "Console" item to the queue dashboard's navigation (its HTML pages only)."""

    ITEM = b'<li class="nav__items__item"><a href="/console">Console</a></li>'

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None  # the dashboard returns its body; it does not write()

        result = self.app(environ, capture)
        if result is None or "status" not in captured:  # a path the dashboard has no route for
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found\n"]
        body = b"".join(part.encode() if isinstance(part, str) else part for part in result)
        headers = captured["headers"]
        if any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers):
            body = body.replace(b"</ul>", self.ITEM + b"</ul>", 1)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        return [body]


def dashboard_app(runtime):
    """The Dramatiq dashboard for this service's broker, behind admin auth.

    It lists `broker.queues`, i.e. the queues declared in this process: runtime.setup declares
    every actor, so every queue of the service is there. A stub broker (tests without Redis)
    has no dashboard: None.
    """
    from dramatiq.brokers.redis import RedisBroker
    if not isinstance(runtime.broker, RedisBroker):
        return None
    from dramatiq_dashboard import DashboardApp
    return RequireAdmin(LinkToConsole(DashboardApp(broker=runtime.broker, prefix=DASHBOARD_PREFIX)),
                        runtime.settings)


def mount_operator_apps(app, runtime):
    """The web process's WSGI app: the Falcon app with the dashboard mounted at /dashboard."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    dashboard = dashboard_app(runtime)
    if dashboard is None:
        return app
    return DispatcherMiddleware(app, {DASHBOARD_PREFIX: dashboard})
