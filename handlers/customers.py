"""Customer events: the owner of record (email, metadata) and their default payment method.

A customer.updated whose `previous_attributes` show `invoice_settings.default_payment_method` or
`default_source` changed (or, when the sender gives no `previous_attributes`, whose default differs
from the one we had stored) means the owner chose a new default card: it is recorded, and an unpaid
invoice in dunning is retried with it at once (handlers/cards.py: one retry per invoice and card).
"""

from __future__ import annotations

from handlers.cards import default_payment_method, known_details, record_card, schedule_retries
from handlers.context import HandlerContext, StripeEvent
from handlers.facts import upsert_customer
from handlers.reachability import owner_known
from handlers.stripe_objects import card_details, dig, expandable_id


def created(ctx: HandlerContext, event: StripeEvent):
    upsert_customer(ctx, event.object, event.created)
    if isinstance(event.object.get("id"), str):
        owner_known(ctx, event.object["id"])  # a case opened before this event reached us catches up


def updated(ctx: HandlerContext, event: StripeEvent):
    customer = event.object
    known_before = default_payment_method(ctx, customer["id"]) if customer.get("id") else None
    upsert_customer(ctx, customer, event.created)
    if isinstance(customer.get("id"), str):
        owner_known(ctx, customer["id"])
    new_default = changed_default(customer, event.previous_attributes) \
        or differs_from_known(customer, event.previous_attributes, known_before)
    if not new_default or not customer.get("id"):
        return None
    if default_payment_method(ctx, customer["id"]) != new_default:
        return None  # an older event arriving late: the customer has moved on since
    details = _default_card_details(customer, new_default) or known_details(ctx, customer["id"], new_default)
    record_card(ctx, event, customer["id"], new_default, details)
    schedule_retries(ctx, customer["id"], new_default)
    return None


def changed_default(customer: dict, previous: dict) -> str | None:
    """The new default payment method (or source) when this update changed it, else None."""
    if "default_payment_method" in (previous.get("invoice_settings") or {}):
        return expandable_id(dig(customer, "invoice_settings", "default_payment_method"))
    if "default_source" in previous and not dig(customer, "invoice_settings", "default_payment_method"):
        return expandable_id(customer.get("default_source"))
    return None


def differs_from_known(customer: dict, previous: dict, known_before: str | None) -> str | None:
    """Without `previous_attributes` (older senders, fakes), compare with the default we had stored.

    Only when we knew a default before: a customer seen for the first time tells us nothing new.
    """
    if previous or not known_before:
        return None
    current = expandable_id(dig(customer, "invoice_settings", "default_payment_method")) \
        or expandable_id(customer.get("default_source"))
    return current if current and current != known_before else None


def _default_card_details(customer: dict, payment_method_id: str) -> dict | None:
    """Card details when the payload carries them: an expanded default, or the legacy `sources` list."""
    for candidate in (dig(customer, "invoice_settings", "default_payment_method"), customer.get("default_source")):
        if isinstance(candidate, dict) and candidate.get("id") == payment_method_id:
            return card_details(candidate)
    sources = dig(customer, "sources", "data")
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and source.get("id") == payment_method_id:
            return card_details(source)
    return None


def deleted(ctx: HandlerContext, event: StripeEvent):
    """Occurs when the customer is deleted in Stripe: stop mailing them and erase their personal data.

    The erasure (worker/privacy/erasure.py) runs in this event's transaction, so the payload of this very
    event (Stripe sends the whole customer as it was) is stripped before anything commits.
    """
    customer = event.object
    upsert_customer(ctx, {**customer, "deleted": True}, event.created)
    if isinstance(customer.get("id"), str):
        ctx.erasures.erase(ctx, customer["id"], requested_by="stripe", reason="customer.deleted from Stripe",
                           event_id=event.id)
