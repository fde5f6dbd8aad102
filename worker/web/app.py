"""The HTTP face: verify Stripe's signature, store the event, enqueue its id, answer 2xx.

Nothing is processed in the request. The event is committed before the answer, so a 2xx means
it is durable; a database that is down answers 503 so that Stripe retries; a broker that is
down still answers 200 (the event is stored and the reconciler enqueues it later).
"""

from __future__ import annotations

import time

import falcon
import structlog

from handlers.registry import known_types
from worker.console import web as console_web
from worker.observe import metrics
from worker.web import openapi
from worker.web import ops as web_ops
from worker.web import platform as web_platform
from worker.infra.db import DatabaseUnavailable
from worker.privacy.erasure import strip_if_erased
from worker.intake.event_store import InvalidEvent, message_args, parse_envelope, store_event
from worker.web.http_util import json_error, read_body
from worker.intake.signatures import SignatureError, verify_stripe_signature
from worker.observe.metrics_ops import webhook_rejected
from worker.web.admin import PaymentLinks
from worker.web.privacy import CustomerErase

log = structlog.get_logger("worker.web")


class StripeWebhook:
    """POST /webhooks/stripe."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.known = known_types()

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        try:
            body = read_body(req)
        except falcon.HTTPContentTooLarge:
            webhook_rejected("too_large")
            raise
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            webhook_rejected("not_utf8")
            return json_error(resp, falcon.HTTP_400, "body is not UTF-8")
        try:
            verify_stripe_signature(payload, req.get_header("Stripe-Signature"),
                                    self.runtime.settings.stripe_webhook_secrets)
        except SignatureError as exc:
            log.info("webhook.rejected", reason=str(exc))
            webhook_rejected("bad_signature")
            return json_error(resp, falcon.HTTP_400, f"invalid signature: {exc}")
        try:
            envelope = parse_envelope(payload, self.known)
        except InvalidEvent as exc:
            log.info("webhook.rejected", reason=str(exc))
            webhook_rejected("not_an_event")
            return json_error(resp, falcon.HTTP_400, f"not a Stripe event: {exc}")

        known = envelope.type in self.known
        try:
            if not known:  # never processed: an erased customer's data must not be stored at all
                envelope = strip_if_erased(self.runtime.db, envelope)
            is_new = store_event(self.runtime.db, envelope, known_type=known)
        except DatabaseUnavailable as exc:
            log.error("webhook.database_unavailable", event_id=envelope.id, error=str(exc)[:300])
            webhook_rejected("database_unavailable")
            resp.set_header("Retry-After", "30")
            return json_error(resp, falcon.HTTP_503, "database unavailable; retry later")

        enqueued = False
        if is_new and known:
            try:
                self.runtime.actors.process_event.send(*message_args(envelope))
                enqueued = True
            except Exception as exc:  # broker down: stored; the reconciler enqueues it later
                log.warning("webhook.enqueue_failed", event_id=envelope.id, error=str(exc)[:300])
        metrics.webhook_received(envelope.type, is_new, time.perf_counter() - started)
        log.info("webhook.accepted", event_id=envelope.id, event_type=envelope.type,
                 duplicate=not is_new, enqueued=enqueued, ignored=not known)
        resp.media = {"received": True, "id": envelope.id, "duplicate": not is_new,
                      "ignored": not known}


class Health:
    """GET /healthz: the process is up."""

    def on_get(self, _req, resp):
        resp.media = {"status": "ok"}


class Ready:
    """GET /readyz: the database and the broker answer."""

    def __init__(self, runtime):
        self.runtime = runtime

    def on_get(self, _req, resp):
        # The answer says which dependency is down, never why: driver errors name hosts, ports
        # and roles. The log says why (scrubbed by worker.observe.logs).
        checks = {}
        try:
            self.runtime.db.ping()
            checks["database"] = "ok"
        except DatabaseUnavailable as exc:
            log.warning("readyz.database_down", error=str(exc)[:200])
            checks["database"] = "down"
        try:
            from worker.queue.queue_state import ping
            ping(self.runtime.broker)
            checks["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any broker failure is "down"
            log.warning("readyz.broker_down", error=str(exc)[:200])
            checks["broker"] = "down"
        ok = all(v == "ok" for v in checks.values())
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ok" if ok else "unavailable", "checks": checks}


def _handle_uncaught(req, resp, ex, params):
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("web.unhandled_error", path=req.path)
    json_error(resp, falcon.HTTP_500, "internal error")


def create_app(runtime) -> falcon.App:
    """The WSGI app: webhook, health, admin API, metrics (dashboard is mounted by wsgi_app)."""
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(Exception, _handle_uncaught)
    app.add_route("/webhooks/stripe", StripeWebhook(runtime))
    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(runtime))
    app.add_route("/payment-links", PaymentLinks(runtime))
    app.add_route("/customers/{customer_id}/erase", CustomerErase(runtime))
    app.add_route("/metrics", web_ops.Metrics(runtime))
    app.add_route("/openapi.json", openapi.Document())
    web_platform.add_routes(app, runtime)
    console_web.add_routes(app, runtime)  # /console: the support and operations console
    return app


def wsgi_app(runtime):
    """The whole web process: the Falcon app, plus mounted WSGI apps (the queue dashboard)."""
    try:
        runtime.db.tables  # reflect the schema at boot, not on the first webhook
    except DatabaseUnavailable as exc:  # the webhook answers 503 until it is back
        log.warning("web.database_unavailable_at_start", error=str(exc)[:200])
    return web_ops.mount_operator_apps(create_app(runtime), runtime)
