"""Verify at Stripe before a consequential step: never dun or disrupt an owner who has paid.

Why: webhooks get lost (endpoint down, not subscribed, a /pay answered `paid` with no
`invoice.paid` after it). Before every schedule step, when STRIPE_API_KEY is set, the step
runner reads the invoice, its subscription's status and the customer from Stripe (outside any
transaction: worker/stripe/case_facts.py), then, under the case lock (`apply` here):
  - invoice paid / void / uncollectible, or the subscription canceled: the case ends by the
    matching trigger, recorded with event id `verified-at-stripe` (no dunning email; the
    normal recovery email and `service.restored` / `service.disruption_cancelled` follow);
  - the customer is upserted, so an owner change without a customer.* event is followed.
When Stripe cannot be reached the facts are `unavailable`: the runner lets the reminders and the
warning proceed (the webhook facts stand), but the `disrupt` step waits and is retried with
backoff: nothing is disrupted on unverified facts. Without an API key nothing is read and
behaviour stays event-driven (the README says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from handlers import dunning
from handlers.context import HandlerContext
from handlers.facts import upsert_customer
from worker.pure.clock import to_unix, utcnow

log = structlog.get_logger("handlers.verification")

VERIFIED_EVENT_ID = "verified-at-stripe"  # case_transitions.event_id of an end found by reading Stripe
_ENDS = {"paid": dunning.INVOICE_PAID, "void": dunning.INVOICE_VOIDED,
         "uncollectible": dunning.MARKED_UNCOLLECTIBLE}


@dataclass(frozen=True)
class StripeFacts:
    """What Stripe says now; `unavailable` when it could not be asked (network, 429, 5xx)."""

    invoice: dict | None = None
    subscription_status: str | None = None
    customer: dict | None = None
    unavailable: str | None = None


def apply(ctx: HandlerContext, case: dict, facts: StripeFacts) -> dict | None:
    """Bring the (locked) case in line with Stripe; None when the case ended here."""
    if facts.unavailable:
        return case
    if facts.customer is not None:
        upsert_customer(ctx, {**facts.customer, "id": case["customer_id"]}, to_unix(utcnow()))
    status = (facts.invoice or {}).get("status")
    trigger = _ENDS.get(status)
    if trigger is None and facts.subscription_status == "canceled":
        trigger = dunning.SUBSCRIPTION_DELETED
    if trigger is None:
        if case["verify_failures"]:
            case = dunning.update_case(ctx, case, {"verify_failures": 0})
        return case
    end_verified(ctx, case, trigger, facts.invoice or {})
    return None


def end_verified(ctx: HandlerContext, case: dict, trigger: str, invoice: dict) -> None:
    """End the case by what Stripe says (recorded as verified there), as the webhook would have."""
    from handlers.invoices import end_case
    _record_invoice_status(ctx, case["invoice_id"], invoice, trigger)
    log.info("case.verified_at_stripe", case_id=case["id"], trigger=trigger, invoice_status=invoice.get("status"))
    end_case(ctx, case, trigger, None, event_id=VERIFIED_EVENT_ID,
             amount_paid=invoice.get("amount_paid") if trigger == dunning.INVOICE_PAID else None)


def _record_invoice_status(ctx: HandlerContext, invoice_id: str, invoice: dict, trigger: str) -> None:
    """The invoices row learns the final status, so a late, older failure never reopens the case."""
    from sqlalchemy import update
    status = {v: k for k, v in _ENDS.items()}.get(trigger)
    if status is None:
        return
    invoices = ctx.table("invoices")
    ctx.conn.execute(update(invoices).where(invoices.c.id == invoice_id)
                     .values(status=status, amount_remaining=0 if status == "paid" else invoices.c.amount_remaining,
                             updated_at=ctx.now))
    ctx.rows.pop(("invoices", invoice_id), None)  # a copy kept by handlers.facts is stale now
