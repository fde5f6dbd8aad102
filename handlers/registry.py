"""The handler registry: one readable table from Stripe event type to the handler that acts on it.

A type missing here is stored as `ignored` and never enqueued. Each entry says when Stripe sends
the event and why we care.
"""

from __future__ import annotations

from typing import Callable

from handlers.context import HandlerContext, StripeEvent

Handler = Callable[[HandlerContext, StripeEvent], object]


def _table() -> dict[str, Handler]:
    from handlers import actions, cards, customers, invoices, subscriptions

    return {
        # -- the dunning case's own facts -------------------------------------------------
        # Occurs when an invoice payment attempt fails: opens (or updates) the dunning case.
        "invoice.payment_failed": invoices.payment_failed,
        # Occurs when an invoice is paid (in or out of band): the case is recovered.
        "invoice.paid": invoices.paid,
        # Occurs when a payment attempt succeeds (older alias of invoice.paid; both may arrive).
        "invoice.payment_succeeded": invoices.paid,
        # Occurs when an invoice is voided: its case ends, its disruption is cancelled.
        "invoice.voided": invoices.voided,
        # Occurs when an invoice is written off: its case ends as uncollectible.
        "invoice.marked_uncollectible": invoices.marked_uncollectible,
        # Occurs when the payment needs the owner (3-D Secure): email the confirmation link.
        "invoice.payment_action_required": actions.payment_action_required,
        # Occur through an invoice's life: keep what we know of it up to date (amounts, links).
        "invoice.created": invoices.updated,
        "invoice.finalized": invoices.updated,
        "invoice.updated": invoices.updated,
        # -- subscriptions -----------------------------------------------------------------
        # Occurs when a subscription ends: the cases of its invoices end as voided.
        "customer.subscription.deleted": subscriptions.deleted,
        # Occur when a subscription starts or changes: keep its status and metadata.
        "customer.subscription.created": subscriptions.updated,
        "customer.subscription.updated": subscriptions.updated,
        # -- customers and their cards -------------------------------------------------------
        # Occurs when a customer is created: the owner of record and the platform's metadata.
        "customer.created": customers.created,
        # Occurs when a customer changes: owner email, metadata, a new default card (retry now).
        "customer.updated": customers.updated,
        # Occurs when a customer is deleted: stop mailing them.
        "customer.deleted": customers.deleted,
        # Occur when a card is attached or changed: record it, retry a failed invoice.
        "payment_method.attached": cards.payment_method_changed,
        "payment_method.updated": cards.payment_method_changed,
        "payment_method.automatically_updated": cards.payment_method_changed,
        "customer.source.created": cards.source_changed,
        "customer.source.updated": cards.source_changed,
        # Occurs when a card will expire at the end of the month: warn before anything fails.
        "customer.source.expiring": cards.source_expiring,
        # Occurs when a card was saved through a SetupIntent (the dashboard's card form).
        "setup_intent.succeeded": cards.setup_intent_succeeded,
    }


_HANDLERS: dict[str, Handler] | None = None


def handlers() -> dict[str, Handler]:
    global _HANDLERS
    if _HANDLERS is None:
        _HANDLERS = _table()
    return _HANDLERS


def known_types() -> frozenset[str]:
    return frozenset(handlers())


def handler_for(event_type: str) -> Handler | None:
    return handlers().get(event_type)
