"""The operators' HTTP pages: GET /metrics and the queue dashboard at /dashboard.

/metrics carries counts, never ids or addresses, and recovered amounts only with
METRICS_AMOUNTS=1. It needs `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set;
without it, only a loopback peer may scrape it (a sidecar Prometheus), so a public port never
serves it anonymously. Its domain figures are counts kept by triggers (worker/observe/metric_counts.py),
read at most once per METRICS_REFRESH_SECONDS (worker.observe.metrics.DomainSnapshot): scrapers cannot
turn it into database load.

The dashboard sits behind the admin credentials (it can requeue and delete messages), answers
400 to a malformed query string instead of letting it reach the dashboard's int() as a 500, and
every response carries X-Frame-Options: DENY, a restrictive CSP and SameSite cookies.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from urllib.parse import parse_qsl

import falcon
import structlog

from config.settings import is_loopback
from worker.observe import metrics
from worker.web.auth import is_authorized
from worker.web.http_util import json_error

DASHBOARD_PREFIX = "/dashboard"
RENDER_CACHE_SECONDS = 1.0
log = structlog.get_logger("worker.web.ops")


class Metrics:
    """GET /metrics: Prometheus text format, one view of web and worker processes plus the domain."""

    def __init__(self, runtime):
        self.runtime = runtime
        settings = runtime.settings
        self.snapshot = metrics.DomainSnapshot(runtime.db, getattr(settings, "metrics_refresh_seconds", 30.0),
                                               amounts=getattr(settings, "metrics_amounts", False))
        if self.snapshot.refresh_seconds > 0:
            self.snapshot.start()  # the first figures are ready before the first scrape
        self._rendered: tuple[float, bytes, str] | None = None
        self._render_lock = threading.Lock()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = getattr(self.runtime.settings, "metrics_token", None)
        if token:
            given = req.get_header("Authorization") or ""
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8", "replace"),
                                                                     token.encode("utf-8")):
                resp.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
                return json_error(resp, falcon.HTTP_401, "missing or wrong metrics token (METRICS_TOKEN)")
        elif not is_loopback(req.remote_addr or ""):
            return json_error(resp, falcon.HTTP_403, "set METRICS_TOKEN to scrape /metrics from another host")
        body, content_type = self._render()
        resp.content_type = content_type
        resp.data = body

    def _render(self) -> tuple[bytes, str]:
        """The exposition, rendered at most once per RENDER_CACHE_SECONDS: a burst of scrapers
        costs one render (with the snapshot off, as in tests, every scrape renders)."""
        if self.snapshot.refresh_seconds <= 0:
            return metrics.render(self.runtime, self.snapshot)
        with self._render_lock:
            now = time.monotonic()
            if self._rendered is None or now - self._rendered[0] >= RENDER_CACHE_SECONDS:
                body, content_type = metrics.render(self.runtime, self.snapshot)
                self._rendered = (now, body, content_type)
            return self._rendered[1], self._rendered[2]


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


DASHBOARD_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
MAX_DASHBOARD_FORM = 16 * 1024
_CURSOR = re.compile(r"[0-9]{1,18}")


def _plain(start_response, status: str, message: str, headers=()) -> list[bytes]:
    body = (message.rstrip("\n") + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


class SecureHeaders:
    """WSGI middleware: no framing, a CSP, nosniff, and every cookie SameSite=Strict."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            headers = [(name, _same_site(value) if name.lower() == "set-cookie" else value)
                       for name, value in headers if name.lower() not in
                       {h.lower() for h, _ in DASHBOARD_HEADERS}]
            return start_response(status, headers + list(DASHBOARD_HEADERS), exc_info)
        return self.app(environ, start)


def _same_site(cookie: str) -> str:
    return cookie if "samesite=" in cookie.lower() else cookie + "; SameSite=Strict"


class DashboardInputs:
    """WSGI middleware: what the dashboard would turn into a 500 is a 400 with one line here.

    Its queue pages int() the `cursor` parameter, and its forms int() a Content-Length that a
    chunked request does not have and index a field that may be absent.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        from io import BytesIO
        try:
            params = parse_qsl(environ.get("QUERY_STRING", ""), max_num_fields=20)
        except ValueError:
            return _plain(start_response, "400 Bad Request", "malformed query string")
        for name, value in params:
            if name == "cursor" and not _CURSOR.fullmatch(value):
                return _plain(start_response, "400 Bad Request", "cursor must be a non-negative integer")
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                raw = _read_form(environ)
                form = dict(parse_qsl(raw.decode("utf-8"), strict_parsing=bool(raw), max_num_fields=20))
            except (ValueError, UnicodeDecodeError):
                return _plain(start_response, "400 Bad Request", "malformed form body")
            if not form.get("id"):
                return _plain(start_response, "400 Bad Request", "the form needs an id")
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = BytesIO(raw), str(len(raw))
        return self.app(environ, start_response)


def _read_form(environ) -> bytes:
    """The form body (Content-Length or chunked), at most MAX_DASHBOARD_FORM bytes, else ValueError."""
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length:
        if not length.isdigit() or int(length) > MAX_DASHBOARD_FORM:
            raise ValueError("bad length")
        return stream.read(int(length))
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""
    raw = stream.read(MAX_DASHBOARD_FORM + 1)
    if len(raw) > MAX_DASHBOARD_FORM:
        raise ValueError("too long")
    return raw


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
    """The Dramatiq dashboard for this service's broker (mounted behind admin auth).

    It lists `broker.queues`, i.e. the queues declared in this process: runtime.setup declares
    every actor, so every queue of the service is there. A stub broker (tests without Redis)
    has no dashboard: None.
    """
    from dramatiq.brokers.redis import RedisBroker
    if not isinstance(runtime.broker, RedisBroker):
        return None
    from worker.vendor.dramatiq_dashboard import DashboardApp
    return DashboardInputs(LinkToConsole(DashboardApp(broker=runtime.broker, prefix=DASHBOARD_PREFIX)))


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

    from worker.queue.queue_state import broker_kind
    dashboard = dashboard_app(runtime)
    if dashboard is None and broker_kind(runtime.broker) == "rabbitmq":
        dashboard = no_dashboard_on_rabbitmq
    if dashboard is None:
        return app
    return DispatcherMiddleware(app, {DASHBOARD_PREFIX: SecureHeaders(RequireAdmin(SlashRedirect(dashboard),
                                                                          runtime.settings))})
