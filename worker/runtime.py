"""The composition root: the process-wide runtime (settings, database, broker, actors) built once at
start, and the adapters of the domain's ports (handlers/ports.py) wired into it.

Every entry point (web app, `dramatiq` worker processes, scheduler, CLI) calls `setup()` first.
Nothing here runs at import: the broker is set explicitly before any actor is declared. Only the
CLI (worker/cli/) imports this module; the rooms receive the runtime as an argument.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from config.settings import Settings, load_settings
from worker.queue.broker import make_broker
from worker.infra.db import Database
from worker.observe.logs import configure_logging, register_secrets


@dataclass
class Runtime:
    settings: Settings
    db: Database
    broker: dramatiq.Broker
    actors: Any = None
    effects: Any = None  # handlers.ports.Effects (worker.delivery.effects)
    erasures: Any = None  # handlers.ports.Erasures (worker.privacy.erasure)
    consumption: Any = None  # worker.queue.consumption.Consumption: the queues this process's worker takes
    _policy: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _services: dict = field(default_factory=dict)

    @property
    def policy(self):
        """The dunning policy file, parsed once per process."""
        if self._policy is None:
            from handlers.policy import load_policy
            from worker.delivery.emails import template_names
            self._policy = load_policy(self.settings.dunning_policy,
                                       template_names(self.settings.email_templates_dir))
        return self._policy

    def service(self, name: str, factory):
        """A lazily built, process-wide client (Stripe, SendGrid, HTTP session...)."""
        with self._lock:
            if name not in self._services:
                self._services[name] = factory(self)
            return self._services[name]


_current: Runtime | None = None


def setup(settings: Settings | None = None, broker: dramatiq.Broker | None = None,
          *, configure_logs: bool = True) -> Runtime:
    """Build the runtime for this process (idempotent unless new settings or broker are given)."""
    global _current
    if _current is not None and settings is None and broker is None:
        return _current
    settings = settings or load_settings()
    if configure_logs:
        configure_logging(settings.log_format, settings.log_level)
    register_secrets([*settings.stripe_webhook_secrets, settings.admin_token, settings.stripe_api_key,
                      settings.sendgrid_api_key, *settings.platform_webhook_secrets,
                      settings.platform_api_token, settings.dashboard_password, settings.metrics_token,
                      settings.sentry_dsn])
    if settings.sentry_dsn:
        from worker.observe.error_tracking import init_error_tracking
        from worker.observe.metrics_ops import release
        init_error_tracking(settings.sentry_dsn, release=release())
    if broker is None:
        broker = make_broker(settings)
    from worker.observe import metrics
    metrics.install_broker_middleware(broker, settings)
    dramatiq.set_broker(broker)
    from worker.queue.actors import declare_actors
    database = Database(settings.database_url, pool_size=settings.database_pool_size,
                        max_overflow=settings.database_max_overflow)
    runtime = Runtime(settings=settings, db=database, broker=broker)
    runtime.policy  # checked at start: a bad policy file (e.g. a [retention] typo) stops start-up here
    runtime.actors = declare_actors(broker, current)
    from worker.queue import consumption
    runtime.consumption = consumption.install(broker)
    from worker.delivery.effects import OutboxEffects
    from worker.privacy.erasure import Erasures
    runtime.effects, runtime.erasures = OutboxEffects(runtime), Erasures()  # the domain's ports
    _current = runtime
    return runtime


def current() -> Runtime:
    if _current is None:
        return setup()
    return _current


def web_app():
    """The web process's WSGI app, built in each gunicorn worker after fork (`dunning web`)."""
    from worker.web.app import wsgi_app
    return wsgi_app(setup())


def worker_setup() -> None:
    """Entry for the dramatiq CLI: `dramatiq worker.runtime:worker_setup worker.runtime`.

    The email templates are compiled here, in each worker process, before it takes a message."""
    runtime = setup()
    from worker.delivery.emails import compile_all
    compile_all(runtime.settings.email_templates_dir)
