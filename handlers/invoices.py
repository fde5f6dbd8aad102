"""Invoice events: the facts that open, advance and end a dunning case (see handlers/dunning.py).

Stripe delivers at least once and in any order, so every handler first records the invoice
(handlers/facts.upsert_invoice: newest wins, and paid/void/uncollectible stick), then acts on
the case with its row locked:
- a duplicate event never reaches a handler twice (events are stored once by Stripe id);
- an older event never overwrites a newer one (cases.last_event_created);
- an invoice already final in the invoices table never opens a case (invoice.paid delivered
  before the payment_failed that preceded it leaves no case and sends nothing);
- an event for a case that has ended is logged and ignored, never applied.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select

from handlers import accounts, dunning, steps
from handlers import dedupe_keys
from handlers.context import HandlerContext, PermanentEventError, StripeEvent
from handlers.facts import FINAL_INVOICE_STATUSES, load, remembered, upsert_invoice
from handlers.stripe_objects import card_details, dig, invoice_failure, merge_into_invoice
from worker.pure.clock import from_unix
from worker.pure.json_text import loads

log = structlog.get_logger("handlers.invoices")

# The invoice status each ending event means, and the trigger it is for the case.
_ENDS = {
    "paid": dunning.INVOICE_PAID,
    "void": dunning.INVOICE_VOIDED,
    "uncollectible": dunning.MARKED_UNCOLLECTIBLE,
}


def payment_failed(ctx: HandlerContext, event: StripeEvent):
    """Occurs when an automatic (or manual) payment attempt fails: open the case, or record the attempt.

    https://docs.stripe.com/api/events/types#event_types-invoice.payment_failed
    The PaymentIntent read before the transaction (worker.intake.payment_prefetch) names the card and the
    decline when the payload carries only its id.
    """
    invoice = merge_into_invoice(event.object, ctx.prefetched)
    row = _record_invoice(ctx, invoice, event, hold_subscription=True)  # before the case: see _subscription_deleted
    # An invoice this transaction just inserted has no case to look for: a case is opened only after its
    # invoice is recorded (were one left by a retention run cut short, open_case's conflict finds it).
    case = None if row["id"] in ctx.inserted_invoices else dunning.lock_case(ctx, invoice_id=row["id"])
    if row["status"] in FINAL_INVOICE_STATUSES:
        if dunning.is_open(case):  # the final status came by another event type (invoice.updated)
            return end_case(ctx, case, _ENDS[row["status"]], event)
        if case is None:  # paid (voided...) was delivered before this older failure: record it, send nothing
            return _open(ctx, row, invoice, event, already_final=True)
        log.info("case.event_after_end", case_id=case["id"], state=case["state"], event_type=event.type)
        return "ignored"
    if case is None:
        return _open(ctx, row, invoice, event)
    if not dunning.is_open(case):
        log.warning("case.event_after_end", case_id=case["id"], state=case["state"], event_type=event.type)
        return "ignored"
    _record_attempt(ctx, case, invoice, event)
    return None


def paid(ctx: HandlerContext, event: StripeEvent):
    """Occurs when the invoice is paid (invoice.paid, and its older alias invoice.payment_succeeded).

    https://docs.stripe.com/api/events/types#event_types-invoice.paid
    """
    return _ending_event(ctx, event, "paid")


def voided(ctx: HandlerContext, event: StripeEvent):
    """Occurs when the invoice is voided: its case ends, its disruption is cancelled."""
    return _ending_event(ctx, event, "void")


def marked_uncollectible(ctx: HandlerContext, event: StripeEvent):
    """Occurs when the invoice is written off: its case ends as uncollectible."""
    return _ending_event(ctx, event, "uncollectible")


def updated(ctx: HandlerContext, event: StripeEvent):
    """invoice.created/finalized/updated: keep the invoice current; a final status ends its case."""
    row = upsert_invoice(ctx, event.object, event.created)
    if row is None:
        return "ignored"
    if row["status"] in FINAL_INVOICE_STATUSES:
        case = dunning.lock_case(ctx, invoice_id=row["id"])
        if dunning.is_open(case):
            return end_case(ctx, case, _ENDS[row["status"]], event)
    return None


# -- the decisions ----------------------------------------------------------------------------
def _record_invoice(ctx: HandlerContext, invoice: dict, event: StripeEvent, status: str | None = None, *,
                    hold_subscription: bool = False) -> dict:
    if status is not None:
        invoice = {**invoice, "status": status}  # the event type is the fact, whatever the payload version says
    row = upsert_invoice(ctx, invoice, event.created, hold_subscription=hold_subscription)
    if row is None:
        raise PermanentEventError(f"event {event.id}: the invoice has no id or customer")
    return dict(row)


def _ending_event(ctx: HandlerContext, event: StripeEvent, status: str):
    row = _record_invoice(ctx, event.object, event, status=status)
    case = dunning.lock_case(ctx, invoice_id=row["id"])
    if case is None:
        # Remembered in the invoices table: a late, older payment_failed will not open a case.
        log.info("invoice.final_without_case", invoice_id=row["id"], status=row["status"])
        return None
    if not dunning.is_open(case):
        if case["state"] == dunning.UNCOLLECTIBLE and status == "paid":
            return _paid_after_write_off(ctx, case, event)
        log.warning("case.event_after_end", case_id=case["id"], state=case["state"], event_type=event.type)
        return "ignored"
    # Paid, void and uncollectible stick: if another final status came first, that one is the end.
    return end_case(ctx, case, _ENDS[row["status"]], event)


def _open(ctx: HandlerContext, row: dict, invoice: dict, event: StripeEvent, *, already_final: bool = False):
    """Open the case of a failed invoice and run its day-0 step now.

    When the invoices table already knows the invoice is final (its invoice.paid overtook this
    failure), the case is opened and ended at once, with no step and no email: it stays recovered
    (voided, uncollectible) and any later event for it is ignored.
    """
    customer = load(ctx, "customers", row["customer_id"]) or {}
    if ctx.policy.is_excluded(loads(customer.get("metadata"), {})):
        log.info("case.not_opened", invoice_id=row["id"], reason="customer_excluded_by_policy")
        return "ignored"
    ended_by = _ENDS[row["status"]] if already_final else None
    if ended_by is None and _subscription_deleted(ctx, row):
        ended_by = dunning.SUBSCRIPTION_DELETED  # its customer.subscription.deleted came first
    schedule = ctx.policy.schedule_for(loads(row["price_ids"], []), loads(row["product_ids"], []))
    first_failed_at = from_unix(event.created)
    account_id = accounts.account_id_for(row["subscription_id"], row["customer_id"])
    accounts.ensure_account(ctx, account_id, row["customer_id"], row["subscription_id"])
    values = {
        "invoice_id": row["id"], "customer_id": row["customer_id"], "subscription_id": row["subscription_id"],
        "account_id": account_id, "schedule": schedule.name, "currency": row["currency"],
        "amount_due": row["amount_due"], "first_failed_at": first_failed_at,
        "next_step": 0, "next_step_at": first_failed_at, "last_event_created": event.created,
        **_attempt_facts(invoice),
    }
    opening_step = None
    if ended_by is not None:
        values.update(next_step=None, next_step_at=None)
    else:
        opening_step = steps.plan_opening(ctx, values)  # day 0 written by the INSERT itself
    case = dunning.open_case(ctx, values, event_id=event.id)
    if case is not None and ended_by is not None:
        changes = {"recovered_amount": row["amount_due"]} if ended_by == dunning.INVOICE_PAID else {}
        dunning.apply(ctx, case, ended_by, event_id=None, changes=changes)
        log.info("case.opened_already_final", case_id=case["id"], invoice_id=row["id"], status=row["status"],
                 trigger=ended_by)
        return None
    if case is None:  # another worker opened it in between (its row is committed now): record the attempt
        case = dunning.lock_case(ctx, invoice_id=row["id"])
        if dunning.is_open(case):
            _record_attempt(ctx, case, invoice, event)
        return None
    if opening_step is not None:
        steps.ran_at_opening(ctx, case, opening_step)  # day 0: the payment-failed email, in this transaction
    else:
        steps.run_next_step(ctx, case, catch_up=False)
    return None


def _subscription_deleted(ctx: HandlerContext, row: dict) -> bool:
    """True when the invoice's subscription has ended (customer.subscription.deleted was processed).

    The subscription row (handlers.facts.ensure_subscription made it if unknown) is locked: a
    concurrent subscription.deleted either commits first (we see `canceled`) or waits for this
    case to commit and then ends it. payment_failed locked and kept it already, with the invoice
    (before the case row: the order subscription.deleted takes them in too).
    """
    if not row["subscription_id"]:
        return False
    held = remembered(ctx, "subscriptions", row["subscription_id"])
    if held is not None:
        return held["status"] == "canceled"
    subscriptions = ctx.table("subscriptions")
    status = ctx.conn.execute(ctx.db.lock(select(subscriptions.c.status).where(
        subscriptions.c.id == row["subscription_id"]))).scalar()
    return status == "canceled"


def _record_attempt(ctx: HandlerContext, case: dict, invoice: dict, event: StripeEvent) -> None:
    """A later (or earlier, late-delivered) failed attempt of an open case."""
    changes: dict[str, Any] = {}
    earlier = from_unix(event.created)
    if case["state"] == dunning.FAILING and earlier < case["first_failed_at"]:
        # An older failure delivered late: day 0 is the first failure, so the schedule moves earlier.
        changes["first_failed_at"] = earlier
        schedule = ctx.policy.schedule_named(case["schedule"])
        pending = schedule.step(case["next_step"])
        if pending is not None:
            changes["next_step_at"] = dunning.step_due_at(earlier, pending.day)
    if event.created < case["last_event_created"]:
        if changes:
            dunning.update_case(ctx, case, changes)
        log.info("case.older_event", case_id=case["id"], event_id=event.id, moved_day0=bool(changes))
        return
    changes.update(_attempt_facts(invoice), last_event_created=event.created)
    dunning.apply(ctx, case, dunning.PAYMENT_FAILED, event_id=event.id, changes=changes)


def _attempt_facts(invoice: dict) -> dict[str, Any]:
    """attempt_count, Stripe's next retry, the decline, and the card when the payload has them."""
    code, message = invoice_failure(invoice)
    facts: dict[str, Any] = {
        "attempt_count": int(invoice.get("attempt_count") or 0),
        "next_payment_attempt": from_unix(invoice.get("next_payment_attempt")),
        "last_failure_code": code,
        "last_failure_message": message,
    }
    card = _card_of(invoice)
    if card and card.get("last4"):
        facts["card_brand"] = card.get("brand")
        facts["card_last4"] = card.get("last4")
        facts["card_exp_month"] = card.get("exp_month")  # the failed card's expiry, for the day-0 email
        facts["card_exp_year"] = card.get("exp_year")
    if invoice.get("amount_due") is not None:
        facts["amount_due"] = int(invoice.get("amount_due") or 0)
    return facts


def _card_of(invoice: dict) -> dict | None:
    """The card of the failed charge: an expanded charge, or an expanded payment intent."""
    for candidate in (invoice.get("charge"),
                      dig(invoice, "payment_intent", "last_payment_error", "payment_method"),
                      dig(invoice, "payment_intent", "payment_method"),
                      dig(invoice, "payment_intent", "latest_charge")):
        found = card_details(candidate)
        if found:
            return found
    return None


def end_case(ctx: HandlerContext, case: dict, trigger: str, event: StripeEvent | None, *,
             event_id: str | None = None, amount_paid: Any = None):
    """End the case (steps cancelled), move the account's timeline, and thank the owner when paid.

    Without an event (a read at Stripe, a /pay answered `paid`), `event_id` names the source.
    """
    event_id = event.id if event else event_id
    changes: dict[str, Any] = {}
    if trigger == dunning.INVOICE_PAID:
        invoice = event.object if event else {"amount_paid": amount_paid}
        paid_amount = invoice.get("amount_paid")
        changes["recovered_amount"] = int(paid_amount) if isinstance(paid_amount, int) and paid_amount else \
            case["amount_due"]
    case = dunning.apply(ctx, case, trigger, event_id=event_id, changes=changes)
    restored = accounts.case_closed(ctx, case, trigger)
    if trigger == dunning.INVOICE_PAID:
        _thank_owner(ctx, case, restored)
    return None


def _paid_after_write_off(ctx: HandlerContext, case: dict, event: StripeEvent):
    """A written-off invoice paid after all (Stripe lets an uncollectible invoice be paid).

    The case stays `uncollectible` (an end is never left), but the debt is paid now: the
    disruption it left in place is lifted when no other unpaid invoice of the account remains
    (service.restored), and the owner is thanked as for any payment.
    """
    account = accounts.lock_account(ctx, case)
    restored = account["status"] == accounts.DISRUPTED and accounts.case_closed(ctx, case, dunning.INVOICE_PAID)
    log.info("case.paid_after_write_off", case_id=case["id"], event_id=event.id, restored=restored)
    if _owner_was_dunned(ctx, case):
        _thank_owner(ctx, case, restored)  # never dunned for it (written off before its failure reached us): no mail
    return None


def _owner_was_dunned(ctx: HandlerContext, case: dict) -> bool:
    emails = ctx.table("emails")
    return ctx.conn.execute(select(emails.c.id).where(emails.c.case_id == case["id"]).limit(1)).first() is not None


def _thank_owner(ctx: HandlerContext, case: dict, restored: bool) -> None:
    """One payment-received email, once; it also says service is restored when this payment lifted the
    disruption (issue 14: two emails in the same second read oddly; service-restored is no longer sent
    for a payment)."""
    # The case has ended: say what happened to the service (restored, or still disrupted by
    # another unpaid invoice of the account), not what the case state implies.
    still_disrupted = accounts.lock_account(ctx, case)["status"] == accounts.DISRUPTED
    ctx.effects.case_email(ctx, "payment-received", case["id"], dedupe_keys.payment_received(case["id"]),
                           {"service_disrupted": restored or still_disrupted, "service_restored": restored},
                           case=case)
