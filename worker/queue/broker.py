"""The Dramatiq broker, configured explicitly (never the implicit global default).

Crash recovery is tuned: a worker heartbeats every command; messages held by a worker silent
for HEARTBEAT_TIMEOUT_MS are put back on their queue by a maintenance pass that runs with
MAINTENANCE_CHANCE per million commands. The defaults (60 s, 0.1%) take many minutes on a quiet
queue; these values requeue a killed worker's messages well within a minute.

Idle polling is paced by queue (PacedRedisBroker): queues of work due at once are polled as often
as WORKER_IDLE_POLL_MS says, queues of work due at a time (scheduled steps, every delay queue) as
WORKER_SCHEDULED_POLL_MS says.

BROKER_URL=amqp://... selects RabbitMQ instead (Dramatiq's recommendation for production): there
a killed worker's unacknowledged messages go back on their queue as soon as its connection drops,
and publishes are confirmed. Its virtual host plays the part QUEUE_NAMESPACE plays on Redis.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Retries, TimeLimit

from config.settings import ConfigError, Settings
from worker.queue.queue_names import SCHEDULED_QUEUES

HEARTBEAT_TIMEOUT_MS = 20_000
MAINTENANCE_CHANCE = 200_000  # per million commands: a pass every ~5 polls
MAX_RETRIES = 12
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 10 * 60_000
TIME_LIMIT_MS = 120_000
SCHEDULED_POLL_MS = Settings.worker_scheduled_poll_ms  # WORKER_SCHEDULED_POLL_MS's default, one place


def embedded_url_file(settings: Settings) -> Path:
    return settings.var_dir / "valkey" / "url"


def resolve_redis_url(settings: Settings) -> str:
    """REDIS_URL (or a redis:// BROKER_URL), else the embedded server that `make run` started."""
    if settings.redis_url:
        return settings.redis_url
    if settings.broker_url and not settings.uses_rabbitmq:
        return settings.broker_url
    url_file = embedded_url_file(settings)
    if url_file.is_file():
        return url_file.read_text().strip()
    raise ConfigError("REDIS_URL is required (or use `make run`, which starts an embedded server)")


def middleware_once(broker: dramatiq.Broker, kind: type, make: Callable[[], dramatiq.Middleware]):
    """The broker's middleware of `kind`, made by `make` and added only if it has none: a broker
    reused by a second set-up (tests, a CLI command after the worker's) keeps the first one."""
    for middleware in broker.middleware:
        if isinstance(middleware, kind):
            return middleware
    middleware = make()
    broker.add_middleware(middleware)
    return middleware


def _tune(broker: dramatiq.Broker) -> dramatiq.Broker:
    # Log lines carry the queue message id: actors read it from CurrentMessage.
    broker.add_middleware(CurrentMessage())
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.max_retries = MAX_RETRIES
            middleware.min_backoff = MIN_BACKOFF_MS
            middleware.max_backoff = MAX_BACKOFF_MS
        elif isinstance(middleware, TimeLimit):
            middleware.time_limit = TIME_LIMIT_MS
    return broker


class PacedRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose idle consumers of work due at a time poll less often.

    A Redis consumer polls its queue (a Lua fetch) while the queue is empty, backing off up to the
    worker timeout (WORKER_IDLE_POLL_MS, 250 ms): each process has a consumer per queue and per
    delay queue, ten in all. A poll after a sleep runs on a cold core: on this kind of machine it
    cost 0.57 ms of CPU (a fetch in a tight loop: 0.08 ms), and an idle pool of 2 processes spent
    50-57 ms of CPU a second polling (0.55 of that now). Queues whose messages are due at a time
    rather than at once back off up to `scheduled_poll_ms` instead: the case steps the scheduler
    sends on its own pass, and every delay queue (retries, the held day-0 email), whose messages
    are fetched ahead of their eta and held by the worker until it comes. Their work then starts
    up to that much later (0.5-1x of it: Dramatiq jitters the backoff); work due at once (events,
    emails, notices, Stripe calls) keeps WORKER_IDLE_POLL_MS."""

    def __init__(self, *args, scheduled_poll_ms: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduled_poll_ms = scheduled_poll_ms

    @staticmethod
    def is_scheduled(queue_name: str) -> bool:
        """A delay queue, or a queue whose messages are sent when their work is due (SCHEDULED_QUEUES)."""
        return queue_name.endswith(".DQ") or queue_name in SCHEDULED_QUEUES

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        """Dramatiq's consumer, its idle backoff capped at `timeout` (the worker timeout) or, on a
        scheduled queue, at `scheduled_poll_ms` when that is longer."""
        if self.scheduled_poll_ms and self.is_scheduled(queue_name):
            timeout = max(timeout, self.scheduled_poll_ms)
        return super().consume(queue_name, prefetch, timeout)


def make_redis_broker(url: str, namespace: str = "dunning",
                      scheduled_poll_ms: int | None = SCHEDULED_POLL_MS) -> PacedRedisBroker:
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=3,
                                  health_check_interval=15)
    broker = PacedRedisBroker(
        client=client,
        namespace=namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
        scheduled_poll_ms=scheduled_poll_ms,
    )
    return _tune(broker)


def make_rabbitmq_broker(url: str) -> dramatiq.Broker:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    logging.getLogger("pika").setLevel(logging.WARNING)  # pika narrates every channel at INFO
    return _tune(RabbitmqBroker(url=url, confirm_delivery=True))


def make_broker(settings: Settings) -> dramatiq.Broker:
    """The broker the settings name: RabbitMQ for an amqp:// BROKER_URL, else Redis."""
    if settings.uses_rabbitmq:
        return make_rabbitmq_broker(settings.broker_url)
    return make_redis_broker(resolve_redis_url(settings), settings.queue_namespace,
                             settings.worker_scheduled_poll_ms)


def make_stub_broker() -> StubBroker:
    """An in-memory broker for unit tests (messages are joined explicitly)."""
    return _tune(StubBroker())
