"""Subscription events: keep status and metadata; a deleted subscription ends its cases."""

from __future__ import annotations

from handlers.context import HandlerContext, StripeEvent
from handlers.facts import upsert_subscription


def updated(ctx: HandlerContext, event: StripeEvent):
    upsert_subscription(ctx, event.object, event.created)


def deleted(ctx: HandlerContext, event: StripeEvent):
    upsert_subscription(ctx, event.object, event.created)
