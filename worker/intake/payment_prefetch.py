"""Read the failed payment before the day-0 email: which card, and why the bank declined it.

Why: an `invoice.payment_failed` payload names its PaymentIntent by id only (Stripe does not expand
it in events), so without this read the first email can say neither "your Visa ending in 4242" nor
"the card has expired" (issue 14). When STRIPE_API_KEY is set, processing calls
`failed_payment(runtime, event)` before the handler's transaction (no network I/O
inside a transaction, as for worker.intake.customer_prefetch) and hands the answer to the handler through
HandlerContext.prefetched; handlers.invoices merges it into the invoice it reads.

Only what the email needs leaves this module: the decline's code, decline_code and message, and the
card's brand, last four and expiry (PaymentIntent `last_payment_error` and its `payment_method`, else
the latest charge's `outcome.reason` and `payment_method_details.card` when Stripe expanded it).
Nothing of it is stored beyond the case's brand and last four (and the decline code).

A Stripe error here never holds the email back: the read is best effort (logged), the email then
says what the event itself carried.
"""

from __future__ import annotations

from typing import Any

import structlog

from handlers.stripe_objects import dig, invoice_payment_intent_id, merge_into_invoice  # noqa: F401
from worker.stripe.gateway import StripeGatewayError

log = structlog.get_logger("worker.intake.payment_prefetch")


def failed_payment(runtime, event) -> dict | None:
    """{"payment_intent": <trimmed PaymentIntent>} for a payment failure, else None."""
    if event.type != "invoice.payment_failed" or not runtime.settings.stripe_api_key:
        return None
    invoice = (event.payload.get("data") or {}).get("object") or {}
    if not isinstance(invoice, dict) or isinstance(dig(invoice, "payment_intent", "last_payment_error"), dict):
        return None  # the payload already carries it
    intent_id = invoice_payment_intent_id(invoice)
    if not intent_id:
        return None
    from worker.intake.customer_prefetch import _gateway
    try:
        intent = _gateway(runtime).retrieve_payment_intent(intent_id)
    except StripeGatewayError as exc:
        log.warning("payment_prefetch.unavailable", payment_intent_id=intent_id, error=str(exc)[:300])
        return None
    trimmed = trim_payment_intent(intent)
    return {"payment_intent": trimmed} if trimmed else None


def trim_payment_intent(intent: Any) -> dict | None:
    """The decline and the card of a PaymentIntent, and nothing else of it."""
    if not isinstance(intent, dict) or not intent.get("id"):
        return None
    error = intent.get("last_payment_error") if isinstance(intent.get("last_payment_error"), dict) else {}
    charge = intent.get("latest_charge") if isinstance(intent.get("latest_charge"), dict) else {}
    code = error.get("decline_code") or dig(charge, "outcome", "reason") or error.get("code") \
        or charge.get("failure_code")
    message = error.get("message") or charge.get("failure_message")
    card = _card(dig(error, "payment_method", "card")) or _card(dig(charge, "payment_method_details", "card"))
    trimmed_error: dict[str, Any] = {"decline_code": code, "message": message}
    if card:
        trimmed_error["payment_method"] = {"card": card}
    return {"id": intent["id"], "last_payment_error": trimmed_error}


def _card(card: Any) -> dict | None:
    if not isinstance(card, dict) or not card.get("last4"):
        return None
    return {"brand": card.get("brand"), "last4": str(card["last4"])[-4:],
            "exp_month": card.get("exp_month"), "exp_year": card.get("exp_year")}
