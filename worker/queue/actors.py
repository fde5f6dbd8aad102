"""The Dramatiq actors: thin. Each loads by id, calls the code that knows what to do, and logs.

Messages carry ids, never objects (the database is the truth). Actors are declared on an
explicit broker by `declare_actors`, called from runtime.setup() before any message is sent.
Each message's log context (its id, the case's ids) is bound by one middleware
(worker/queue/log_middleware.py) from MESSAGE_IDS, not by each actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import dramatiq
import structlog

from handlers.context import PermanentEventError

log = structlog.get_logger("worker.queue.actors")

# actor -> the name its message's id is logged under, and whether the case's ids are looked up
# from it. Every actor but one names them from the row it reads anyway (worker.pure.message_log:
# processing once it loaded the event, the others from their case, email, notice or retry); a
# payment link request has no case of its own, and is rare: it is looked up.
MESSAGE_IDS = {
    "process_event": ("event_id", False),
    "run_case_steps": ("case_id", False),
    "send_email": ("email_id", False),
    "deliver_notices": ("account_id", False),
    "create_payment_link": ("payment_link_request", True),
    "retry_invoice": ("card_retry", False),
}


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
    from worker.queue import log_middleware

    log_middleware.install(broker, MESSAGE_IDS, current_runtime)

    @dramatiq.actor(broker=broker, queue_name="events",
                    throws=(PermanentEventError,))  # a malformed payload is not retried
    def process_event(event_id: str, customer_id: str | None = None) -> None:
        """Process one stored Stripe event through its handler (`customer_id`: the customer it names,
        as the webhook read it; worker.intake.event_store.message_args)."""
        from worker.intake.processing import process_event as run
        run(current_runtime(), event_id, customer_id)

    # Few retries: the scheduler enqueues a due case again on its next pass anyway.
    @dramatiq.actor(broker=broker, queue_name="steps", max_retries=3)
    def run_case_steps(case_id: str, as_of: str) -> None:
        """Run the steps of one case that are due as of an instant (scheduler or `dunning tick`)."""
        from worker.scheduling.due_steps import run_due_steps
        from worker.pure.clock import parse_instant
        run_due_steps(current_runtime(), case_id, parse_instant(as_of))

    @dramatiq.actor(broker=broker, queue_name="emails", max_retries=3)
    def send_email(email_id: str) -> None:
        """Deliver one outbox email (SendGrid or .eml file); retries are scheduled in the row."""
        from worker.delivery.email_delivery import deliver_email
        deliver_email(current_runtime(), email_id)

    @dramatiq.actor(broker=broker, queue_name="notices", max_retries=3)
    def deliver_notices(account_id: str) -> None:
        """Deliver the pending platform notices of one account, oldest first."""
        from worker.delivery.notices import deliver_account_notices
        deliver_account_notices(current_runtime(), account_id)

    @dramatiq.actor(broker=broker, queue_name="stripe")
    def create_payment_link(request_id: str) -> None:
        """Create the Stripe payment link of one request and email it to the owner."""
        from worker.stripe.payment_links import create_link
        create_link(current_runtime(), request_id)

    @dramatiq.actor(broker=broker, queue_name="stripe")
    def retry_invoice(retry_id: str) -> None:
        """Retry a failed invoice at once with the customer's new default card."""
        from worker.stripe.card_retries import run_retry
        run_retry(current_runtime(), retry_id)

    return Actors(process_event, run_case_steps, send_email, deliver_notices,
                  create_payment_link, retry_invoice)
