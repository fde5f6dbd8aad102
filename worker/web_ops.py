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


def dashboard_app(runtime):
    """The Dramatiq dashboard for this service's broker (mounted behind admin auth).

    It lists `broker.queues`, i.e. the queues declared in this process: runtime.setup declares
    every actor, so every queue of the service is there. A stub broker (tests without Redis)
    has no dashboard: None.
    """
    from dramatiq.brokers.redis import RedisBroker
    if not isinstance(runtime.broker, RedisBroker):
        return None
    from dramatiq_dashboard import DashboardApp
    return DashboardApp(broker=runtime.broker, prefix=DASHBOARD_PREFIX)


def _plain(start_response, status: str, body: str, headers=()):
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data))), *headers])
    return [data]


def no_dashboard_on_rabbitmq(_environ, start_response):
    """The Dramatiq dashboard reads Redis only: say where the same facts are on RabbitMQ."""
    return _plain(start_response, "501 Not Implemented",
                  "The queue dashboard reads Redis; this service uses RabbitMQ (BROKER_URL).\n"
                  "Queue depths: GET /metrics (dunning_queue_messages) or RabbitMQ's management UI.\n"
                  "Dead letters: `dunning dlq list` and `dunning dlq requeue`.\n")


class SlashRedirect:
    """`/dashboard` (as documented) redirects to `/dashboard/`, where the mounted app's pages start."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "") == "":
            query = environ.get("QUERY_STRING", "")
            location = environ.get("SCRIPT_NAME", "") + "/" + (f"?{query}" if query else "")
            return _plain(start_response, "308 Permanent Redirect", "see /dashboard/\n",
                          [("Location", location)])
        return self.app(environ, start_response)


def mount_operator_apps(app, runtime):
    """The web process's WSGI app: the Falcon app with the dashboard mounted at /dashboard."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from worker.queue_state import broker_kind
    dashboard = dashboard_app(runtime)
    if dashboard is None and broker_kind(runtime.broker) == "rabbitmq":
        dashboard = no_dashboard_on_rabbitmq
    if dashboard is None:
        return app
    return DispatcherMiddleware(app, {DASHBOARD_PREFIX: RequireAdmin(SlashRedirect(dashboard), runtime.settings)})
