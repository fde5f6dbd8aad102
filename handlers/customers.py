"""Customer events: the owner of record (email, metadata) and their default payment method."""

from __future__ import annotations

from handlers.context import HandlerContext, StripeEvent
from handlers.facts import upsert_customer


def created(ctx: HandlerContext, event: StripeEvent):
    upsert_customer(ctx, event.object, event.created)


def updated(ctx: HandlerContext, event: StripeEvent):
    upsert_customer(ctx, event.object, event.created)


def deleted(ctx: HandlerContext, event: StripeEvent):
    upsert_customer(ctx, {**event.object, "deleted": True}, event.created)
