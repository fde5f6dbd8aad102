"""Retry a failed invoice at once with the customer's new default card (the `retry_invoice` actor).

Emails added here: card-declined-again (extra: worker/email_contract.CardDeclinedAgainExtra), dedupe
key handlers.dedupe_keys.card_declined_again (one per card version).

A `card_retries` row (written by handlers/cards.py, unique per invoice and card) is the job.
The Stripe call carries the idempotency key `dunning-card-retry:<invoice>:<payment method>`, so
a job run twice charges at most once. A `paid` answer ends the case as recovered at once
(handlers/verification.end_verified): the `invoice.paid` webhook may never come. A decline is recorded on the row and on the case
(last_failure_code/message; the state and the schedule are left alone) and the owner gets one
`card-declined-again` email naming the new card.

Which card Stripe charges: POST /v1/invoices/:id/pay without `payment_method` charges the
invoice's default, else the subscription's default, else the customer's default. A subscription
created through Checkout usually has its own default_payment_method (the OLD card), so we pass
the new card explicitly unless Stripe's own choice already is that card (then the request stays
minimal, which is also what servers without the `payment_method` parameter support).
"""

from __future__ import annotations

from typing import Any

import structlog

from handlers import dedupe_keys
from handlers.cards import known_details
from handlers.dunning import OPEN_STATES, lock_case, update_case
from handlers.stripe_objects import card_details, dig, expandable_id, invoice_failure, invoice_payment_intent_id
from worker.pure.clock import utcnow
from worker.pure.message_log import bind_ids_of
from worker.stripe.gateway import (
    CardDeclined,
    Decline,
    StripeGatewayError,
    StripeRejected,
    StripeUnavailable,
    gateway,
)
from worker.infra.unit_of_work import context_in, unit_of_work

log = structlog.get_logger("worker.stripe.card_retries")

# Declines that mean "the owner must confirm" (3-D Secure): invoice.payment_action_required
# follows and sends the action-required email; no card-declined-again for those.
ACTION_REQUIRED_CODES = ("invoice_payment_intent_requires_action", "authentication_required",
                         "requires_action")


def idempotency_key(retry_row) -> str:
    return f"dunning-card-retry:{retry_row['dedupe_key']}"


def run_retry(runtime, retry_id: str) -> str:
    """Run one pending retry; return its final status. Raises StripeUnavailable to be retried."""
    retry = _load(runtime, "card_retries", retry_id)
    if retry is None:
        log.warning("card_retry.unknown", retry_id=retry_id)
        return "unknown"
    bind_ids_of(retry)  # the rest of the message's lines name its case, invoice and customer
    if retry["status"] != "pending":
        return retry["status"]
    case = _load(runtime, "cases", retry["case_id"])
    invoice = _load(runtime, "invoices", retry["invoice_id"])
    if case is None or case["state"] not in OPEN_STATES or invoice is None or invoice["status"] != "open":
        return _finish(runtime, retry, "skipped", last_error="the invoice is no longer unpaid in dunning")

    try:
        gw = gateway(runtime)
        stripe_invoice = gw.retrieve_invoice(retry["invoice_id"])
        if stripe_invoice.get("status") != "open":
            return _finish(runtime, retry, "skipped",
                           last_error=f"Stripe says the invoice is {stripe_invoice.get('status')}")
        pm_id = retry["payment_method_id"]
        explicit = _stripe_would_charge(gw, stripe_invoice, retry["customer_id"]) != pm_id
        result = gw.pay_invoice(retry["invoice_id"], idempotency_key(retry), pm_id if explicit else None)
    except CardDeclined as exc:
        return _declined(runtime, retry, case, exc.decline)
    except StripeUnavailable:
        raise  # transient: the actor retries with the same idempotency key
    except StripeRejected as exc:
        if exc.code in ACTION_REQUIRED_CODES:
            return _declined(runtime, retry, case, Decline(exc.code, None, str(exc)))
        return _finish(runtime, retry, "failed", last_error=str(exc))
    except StripeGatewayError as exc:  # not configured: nothing to retry until it is
        return _finish(runtime, retry, "failed", last_error=str(exc))

    if result.get("status") == "paid":
        log.info("card_retry.succeeded", retry_id=retry_id, invoice_id=retry["invoice_id"])
        status = _finish(runtime, retry, "succeeded")
        _recovered_now(runtime, retry, result)
        return status
    # Some servers answer 200 with the invoice still open: read the payment intent to know why.
    outcome, decline = _outcome_of_open_invoice(gw, result)
    if outcome == "succeeded":  # a bank debit is processing: invoice.paid will follow
        return _finish(runtime, retry, "succeeded", last_error="the payment is processing")
    return _declined(runtime, retry, case, decline)


def _recovered_now(runtime, retry, invoice: dict) -> None:
    """Stripe answered `paid`: the case ends as recovered at once (no need to wait for invoice.paid,
    which may never come), with the normal thank-you and service.restored / cancelled notices."""
    from handlers import dunning
    from handlers.verification import end_verified
    with unit_of_work(runtime, log=log) as ctx:
        case = lock_case(ctx, case_id=retry["case_id"])
        if case is None or case["state"] not in OPEN_STATES:
            return
        end_verified(ctx, case, dunning.INVOICE_PAID, invoice)


def _stripe_would_charge(gw, invoice: dict, customer_id: str) -> str | None:
    """The payment method Stripe picks for /pay without one: invoice, subscription, customer default."""
    own = expandable_id(invoice.get("default_payment_method")) or expandable_id(invoice.get("default_source"))
    if own:
        return own
    subscription_id = (expandable_id(dig(invoice, "parent", "subscription_details", "subscription"))
                       or expandable_id(invoice.get("subscription")))
    if subscription_id:
        subscription = gw.retrieve_subscription(subscription_id)
        own = (expandable_id(subscription.get("default_payment_method"))
               or expandable_id(subscription.get("default_source")))
        if own:
            return own
    customer = gw.retrieve_customer(customer_id)
    return (expandable_id(dig(customer, "invoice_settings", "default_payment_method"))
            or expandable_id(customer.get("default_source")))


def _outcome_of_open_invoice(gw, invoice: dict) -> tuple[str, Decline | None]:
    """("succeeded", None) when the payment is processing; else ("declined", why)."""
    code, message = invoice_failure(invoice)
    if code:
        return "declined", Decline(code, None, message)
    intent = invoice.get("payment_intent") if isinstance(invoice.get("payment_intent"), dict) else None
    pi_id = invoice_payment_intent_id(invoice)
    if intent is None and pi_id:
        try:
            intent = gw.retrieve_payment_intent(pi_id)
        except StripeGatewayError as exc:
            log.warning("card_retry.outcome_unknown", error=str(exc)[:300])
    intent = intent or {}
    if intent.get("status") in ("processing", "succeeded", "requires_capture"):
        return "succeeded", None
    if intent.get("status") == "requires_action":
        return "declined", Decline("requires_action", None, "The bank asks the owner to confirm the payment.")
    error = intent.get("last_payment_error") or {}
    return "declined", Decline(error.get("code") or "payment_failed", error.get("decline_code"),
                               error.get("message") or "The payment was not completed.")


def _declined(runtime, retry, case, decline: Decline) -> str:
    """Record the decline on the retry and the case; one card-declined-again email to the owner."""
    needs_action = decline.code in ACTION_REQUIRED_CODES
    card = None if needs_action else _card_for_email(runtime, retry)
    message = (decline.message or decline.code or "declined")[:1000]
    db = runtime.db
    with unit_of_work(runtime, log=log) as ctx:
        conn = ctx.conn
        retries = db.table("card_retries")
        claimed = db.update_by(conn, retries, {
            "status": "declined", "decline_code": decline.decline_code or decline.code, "last_error": message,
            "finished_at": ctx.now}, id=retry["id"], status="pending").rowcount
        if not claimed:
            return "declined"
        # The case may have ended while the charge was at Stripe (paid, voided, subscription
        # deleted): the decline stays on the retry row, the ended case and its owner are left alone.
        current = lock_case(ctx, case_id=case["id"])
        if current is None or current["state"] not in OPEN_STATES:
            log.info("card_retry.declined_after_case_ended", retry_id=retry["id"], case_id=case["id"],
                     state=current["state"] if current else None)
            return "declined"
        update_case(ctx, current, {"last_failure_code": decline.decline_code or decline.code,
                                   "last_failure_message": message})
        email_id = None
        if not needs_action:
            email_id = ctx.effects.case_email(
                ctx, "card-declined-again", case["id"],
                dedupe_keys.card_declined_again(case["id"], retry["payment_method_id"], retry["card_expiry"]),
                {"card": card, "decline": {"code": decline.code, "decline_code": decline.decline_code,
                                           "message": decline.message}})
    log.info("card_retry.declined", retry_id=retry["id"], case_id=case["id"], invoice_id=retry["invoice_id"],
             code=decline.code, decline_code=decline.decline_code, email_id=email_id, needs_action=needs_action)
    return "declined"


def _card_for_email(runtime, retry) -> dict[str, Any]:
    """Brand and last four of the new card: what we recorded, else asked of Stripe (never stored whole)."""
    with runtime.db.reading() as conn:
        ctx = context_in(runtime, conn)
        details = known_details(ctx, retry["customer_id"], retry["payment_method_id"])
    if not details:
        try:
            details = card_details(gateway(runtime).retrieve_payment_method(retry["payment_method_id"]))
        except StripeGatewayError as exc:
            log.warning("card_retry.card_unknown", error=str(exc)[:300])
    details = details or {}
    return {key: details.get(key) for key in ("brand", "last4", "exp_month", "exp_year")}


def _finish(runtime, retry, status: str, *, last_error: str | None = None) -> str:
    with runtime.db.transaction() as conn:
        runtime.db.update_by(conn, runtime.db.table("card_retries"), {
            "status": status, "last_error": last_error[:1000] if last_error else None, "finished_at": utcnow()},
            id=retry["id"], status="pending")
    log.info("card_retry.finished", retry_id=retry["id"], invoice_id=retry["invoice_id"], status=status,
             reason=last_error)
    return status


def _load(runtime, table_name: str, row_id: str | None) -> dict | None:
    if not row_id:
        return None
    with runtime.db.reading() as conn:
        return runtime.db.row_by(conn, runtime.db.table(table_name), id=row_id)

