"""invoice.payment_action_required: the bank wants the owner to confirm the payment (3-D Secure).

Emails added here: action-required (extra: worker/email_contract.ActionRequiredExtra), dedupe key
handlers.dedupe_keys.action_required (per case, or per invoice when no case is open, and attempt).

The link is where the owner confirms: the payment intent's `next_action` redirect URL when the
payload carries an expanded payment intent, else the invoice's `hosted_invoice_url` (Stripe's
hosted page runs the 3-D Secure challenge and pays this very invoice).

This event is not a failure: it never opens a case nor advances the failure schedule. Stripe
sends it again for each payment attempt that needs the owner, hence one email per attempt.
https://docs.stripe.com/billing/subscriptions/overview#requires-action
"""

from __future__ import annotations

from sqlalchemy import select

from handlers import dedupe_keys
from handlers.context import HandlerContext, StripeEvent
from handlers.facts import FINAL_INVOICE_STATUSES, upsert_invoice
from handlers.stripe_objects import dig
from worker.pure.json_text import loads


def action_url(invoice: dict) -> str | None:
    """Where the owner confirms the payment: next_action's redirect, else the hosted invoice page."""
    intent = invoice.get("payment_intent")
    if isinstance(intent, dict):
        url = dig(intent, "next_action", "redirect_to_url", "url")
        if isinstance(url, str) and url.startswith("https://"):
            return url
    url = invoice.get("hosted_invoice_url")
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None


def payment_action_required(ctx: HandlerContext, event: StripeEvent):
    """Email the owner the link where they confirm the payment; the case's schedule is untouched."""

    invoice = event.object
    row = upsert_invoice(ctx, invoice, event.created)
    if row is None or row["status"] in FINAL_INVOICE_STATUSES:
        return "ignored"
    url = action_url(invoice) or row["hosted_invoice_url"]
    if not url:
        if ctx.log is not None:
            ctx.log.warning("action_required.no_link", invoice_id=row["id"])
        return "ignored"
    customers = ctx.table("customers")
    customer = ctx.conn.execute(select(customers).where(customers.c.id == row["customer_id"])).mappings().first()
    if customer is None or customer["deleted"] or ctx.policy.is_excluded(loads(customer["metadata"], {})):
        return "ignored"

    attempt = invoice.get("attempt_count") or event.id
    extra = {"action_url": url}
    cases = ctx.table("cases")
    case_id = ctx.conn.execute(select(cases.c.id).where(cases.c.invoice_id == row["id"])).scalar()
    if case_id:
        email_id = ctx.effects.case_email(ctx, "action-required", case_id,
                                          dedupe_keys.action_required(attempt, case_id=case_id), extra)
    else:
        email_id = ctx.effects.customer_email(ctx, "action-required", row["customer_id"],
                                              dedupe_keys.action_required(attempt, invoice_id=row["id"]), extra,
                                              invoice_id=row["id"])
    if ctx.log is not None:
        ctx.log.info("action_required.emailed", invoice_id=row["id"], case_id=case_id,
                     email_id=email_id, duplicate=email_id is None)
    return None
