"""Subscription events: keep status and metadata; a deleted subscription ends its cases."""

from __future__ import annotations

import structlog
from sqlalchemy import select

from handlers import accounts, dunning
from handlers.context import HandlerContext, StripeEvent
from handlers.facts import upsert_subscription

log = structlog.get_logger("handlers.subscriptions")


def updated(ctx: HandlerContext, event: StripeEvent):
    upsert_subscription(ctx, event.object, event.created)


def deleted(ctx: HandlerContext, event: StripeEvent):
    """Occurs when a subscription ends: the open cases of its invoices end as voided.

    https://docs.stripe.com/api/events/types#event_types-customer.subscription.deleted
    Cases are locked in id order (then the account), so two writers never wait on each other in a cycle.
    """
    subscription = event.object
    upsert_subscription(ctx, subscription, event.created)
    sid = subscription.get("id")
    if not isinstance(sid, str):
        return "ignored"
    cases = ctx.table("cases")
    ids = list(ctx.conn.execute(select(cases.c.id).where(
        cases.c.subscription_id == sid, cases.c.state.in_(dunning.OPEN_STATES)).order_by(cases.c.id)).scalars())
    locked = [dunning.lock_case(ctx, case_id=case_id) for case_id in ids]
    ended = [dunning.apply(ctx, case, dunning.SUBSCRIPTION_DELETED, event_id=event.id)
             for case in locked if dunning.is_open(case)]
    # The timeline moves once every case has ended (no intermediate "date moved" notice).
    for case in ended:
        accounts.case_closed(ctx, case, dunning.SUBSCRIPTION_DELETED)
    log.info("subscription.deleted", subscription_id=sid, cases_ended=len(ended))
    return None
