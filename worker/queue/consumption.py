"""Which queues this process's Dramatiq worker consumes, learnt when the worker boots.

Work that is due at once on a queue this very process consumes (an email to deliver, after the
event that wrote it committed) can run in the thread at hand instead of a message's round trip
through the broker: an enqueue, a fetch and an ack saved, and no wait for a consumer's poll. A
process that runs no worker (web, scheduler, CLI) or a worker started with `--queues` that leave
the queue out consumes nothing of it and keeps sending the message, so `dunning worker --queues`
still decides which hosts do which work.
"""

from __future__ import annotations

import threading

import dramatiq
import structlog
from dramatiq import Middleware

from worker.pure.message_log import nested_in_message
from worker.queue.broker import middleware_once

log = structlog.get_logger("worker.queue.consumption")


class Consumption(Middleware):
    """Dramatiq's boot and shutdown hooks tell which queues a running worker of this broker takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[int, frozenset[str] | None] = {}  # id(worker) -> its queues (None: all)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        queues = worker.consumer_whitelist  # None or empty: every declared queue
        with self._lock:
            self._workers[id(worker)] = frozenset(queues) if queues else None

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            self._workers.pop(id(worker), None)

    def consumes(self, queue_name: str) -> bool:
        """True while a worker of this process consumes `queue_name`."""
        return any(queues is None or queue_name in queues for queues in tuple(self._workers.values()))


def install(broker: dramatiq.Broker) -> Consumption:
    """The broker's `Consumption` middleware, added once."""
    return middleware_once(broker, Consumption, Consumption)


def run_here_or_send(consumption: Consumption | None, actor: dramatiq.Actor, *args) -> None:
    """Run `actor` on `args` in this thread when this process's worker consumes its queue, else
    send its message. A run that raises is logged and its message sent, so the broker's retries
    take over as they would have. A crash in between leaves the work's row for its sweeper."""
    if consumption is not None and consumption.consumes(actor.queue_name):
        try:
            with nested_in_message():  # the ids it names are its own, not the rest of this message's
                actor(*args)
            return
        except Exception as exc:
            log.warning("queue.run_here_failed", actor=actor.actor_name,
                        error=f"{type(exc).__name__}: {exc}"[:300])
    actor.send(*args)
