"""Invoice events: the facts that open, advance and end a dunning case (see handlers/dunning.py)."""

from __future__ import annotations

from handlers.context import HandlerContext, StripeEvent
from handlers.facts import upsert_invoice


def payment_failed(ctx: HandlerContext, event: StripeEvent):
    upsert_invoice(ctx, event.object, event.created)


def paid(ctx: HandlerContext, event: StripeEvent):
    upsert_invoice(ctx, event.object, event.created)


def voided(ctx: HandlerContext, event: StripeEvent):
    upsert_invoice(ctx, event.object, event.created)


def marked_uncollectible(ctx: HandlerContext, event: StripeEvent):
    upsert_invoice(ctx, event.object, event.created)


def payment_action_required(ctx: HandlerContext, event: StripeEvent):
    upsert_invoice(ctx, event.object, event.created)


def updated(ctx: HandlerContext, event: StripeEvent):
    upsert_invoice(ctx, event.object, event.created)
