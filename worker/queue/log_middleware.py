"""Per-message log context, bound once for every actor by a dramatiq middleware.

Before an actor runs, its log context is cleared and bound to the queue message id and the id
the message carries (under the name its actor gives it: event_id, case_id, email_id ...), plus
the case's invoice, customer and case ids found from it (worker.observe.log_context.case_ids); after it
ran, failed or was skipped, the context is cleared again, so nothing leaks into the next message
the worker thread takes. Dramatiq calls both hooks on the thread that runs the actor.
"""

from __future__ import annotations

from typing import Callable, Mapping

import dramatiq
import structlog
from dramatiq import Middleware

from worker.queue.broker import middleware_once


class LogContext(Middleware):
    """Binds the ids of a message of the actors in `ids` (actor -> (id name, look up the case))."""

    def __init__(self, ids: Mapping[str, tuple[str, bool]], runtime: Callable[[], object]):
        self.ids = dict(ids)
        self.runtime = runtime

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if message.actor_name not in self.ids:
            return
        name, lookup = self.ids[message.actor_name]
        given = {name: message.args[0]} if message.args else {}
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(message_id=message.message_id, **given)
        if lookup:
            from worker.observe.log_context import case_ids
            structlog.contextvars.bind_contextvars(**case_ids(self.runtime(), given))  # invoice, customer, case

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if message.actor_name in self.ids:
            structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


def install(broker: dramatiq.Broker, ids: Mapping[str, tuple[str, bool]], runtime: Callable[[], object]) -> None:
    """Add the middleware to `broker` once; a second set-up's actors join the first one's ids."""
    middleware_once(broker, LogContext, lambda: LogContext(ids, runtime)).ids.update(ids)
