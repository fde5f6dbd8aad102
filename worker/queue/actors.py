"""The Dramatiq actors: thin. Each loads by id, calls the code that knows what to do, and logs.

Messages carry ids, never objects (the database is the truth). Actors are declared on an
explicit broker by `declare_actors`, called from runtime.setup() before any message is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from handlers.context import PermanentEventError

log = structlog.get_logger("worker.queue.actors")

QUEUES = ("events", "steps", "emails", "notices", "stripe")


def _message_id() -> str | None:
    message = CurrentMessage.get_current_message()
    return message.message_id if message else None


@dataclass(frozen=True)
class Actors:
    process_event: Any
    run_case_steps: Any
    send_email: Any
    deliver_notices: Any
    create_payment_link: Any
    retry_invoice: Any


def declare_actors(broker: dramatiq.Broker, current_runtime: Callable[[], Any]) -> Actors:
    """Declare every actor on `broker` (ids in, work done through the runtime `current_runtime()` returns:
    handed over by the composition root, worker.runtime, which this room does not import)."""
    from worker.observe.log_context import case_ids

    def bound(lookup: bool = True, **ids):
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(message_id=_message_id(), **ids)
        if lookup:
            structlog.contextvars.bind_contextvars(**case_ids(current_runtime(), ids))  # invoice, customer, case

    @dramatiq.actor(broker=broker, queue_name="events",
                    throws=(PermanentEventError,))  # a malformed payload is not retried
    def process_event(event_id: str) -> None:
        """Process one stored Stripe event through its handler."""
        from worker.intake.processing import process_event as run
        runtime = current_runtime()
        bound(lookup=False, event_id=event_id)  # processing binds type and ids once it loaded the event
        try:
            run(runtime, event_id)
        finally:
            structlog.contextvars.clear_contextvars()

    # Few retries: the scheduler enqueues a due case again on its next pass anyway.
    @dramatiq.actor(broker=broker, queue_name="steps", max_retries=3)
    def run_case_steps(case_id: str, as_of: str) -> None:
        """Run the steps of one case that are due as of an instant (scheduler or `dunning tick`)."""
        from worker.scheduling.due_steps import run_due_steps
        from worker.pure.clock import parse_instant
        bound(case_id=case_id)
        try:
            run_due_steps(current_runtime(), case_id, parse_instant(as_of))
        finally:
            structlog.contextvars.clear_contextvars()

    @dramatiq.actor(broker=broker, queue_name="emails", max_retries=3)
    def send_email(email_id: str) -> None:
        """Deliver one outbox email (SendGrid or .eml file); retries are scheduled in the row."""
        from worker.delivery.email_delivery import deliver_email
        bound(lookup=False, email_id=email_id)  # deliver_email names the case from the row it reads
        try:
            deliver_email(current_runtime(), email_id)
        finally:
            structlog.contextvars.clear_contextvars()

    @dramatiq.actor(broker=broker, queue_name="notices", max_retries=3)
    def deliver_notices(account_id: str) -> None:
        """Deliver the pending platform notices of one account, oldest first."""
        from worker.delivery.notices import deliver_account_notices
        bound(account_id=account_id)
        try:
            deliver_account_notices(current_runtime(), account_id)
        finally:
            structlog.contextvars.clear_contextvars()

    @dramatiq.actor(broker=broker, queue_name="stripe")
    def create_payment_link(request_id: str) -> None:
        """Create the Stripe payment link of one request and email it to the owner."""
        from worker.stripe.payment_links import create_link
        bound(payment_link_request=request_id)
        try:
            create_link(current_runtime(), request_id)
        finally:
            structlog.contextvars.clear_contextvars()

    @dramatiq.actor(broker=broker, queue_name="stripe")
    def retry_invoice(retry_id: str) -> None:
        """Retry a failed invoice at once with the customer's new default card."""
        from worker.stripe.card_retries import run_retry
        bound(card_retry=retry_id)
        try:
            run_retry(current_runtime(), retry_id)
        finally:
            structlog.contextvars.clear_contextvars()

    return Actors(process_event, run_case_steps, send_email, deliver_notices,
                  create_payment_link, retry_invoice)
