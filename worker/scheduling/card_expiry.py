"""The monthly scan of recorded cards that expire this month (pre-dunning: before anything fails).

Emails: card-expiring through handlers.cards.send_card_expiring (extra: worker/delivery/email_contract.py
CardExpiringExtra), dedupe key handlers.dedupe_keys.card_expiring, shared with the customer.source.expiring handler: one email per card and expiry however many
times the scan runs and whatever Stripe sends.

The scheduler calls this every pass, so it must be cheap: the `cursors` row `card_expiry`
remembers the month scanned and the last `recorded_at` seen. A pass in an already scanned month
only looks at cards recorded since (one indexed query, usually empty); the first pass of a
month looks at every card expiring that month.

Which cards: the customer's current default card (the one Stripe will charge), or any recorded
card of a customer whose default we don't know; only owners with an active (or trialing)
subscription, not excluded by the policy.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import desc, or_, select

from handlers.cards import known_details, send_card_expiring
from worker.infra import cursors
from worker.pure.clock import parse_instant
from worker.infra.unit_of_work import context_in as HandlerContext  # the context with its ports (built by the unit of work)

CURSOR = "card_expiry"
# A card's recorded_at is its handler's clock, taken before its transaction commits: a card can
# become visible after a pass that already saw a newer one. Each pass looks this far back again
# (the email's dedupe key makes a second look harmless).
LATE_COMMIT_GRACE = timedelta(minutes=10)
log = structlog.get_logger("worker.scheduling.card_expiry")


def scan_expiring_cards(runtime, now: datetime) -> int:
    """Queue one card-expiring email per card expiring in `now`'s month; return how many were queued."""
    db = runtime.db
    cards, customers = db.table("cards"), db.table("customers")
    month = f"{now.year:04d}-{now.month:02d}"
    with db.reading(snapshot=True) as conn:
        cursor = cursors.read(conn, db, CURSOR) or {}
        same_month = cursor.get("month") == month
        since = parse_instant(cursor["seen_until"]) if same_month and cursor.get("seen_until") else None
        # What this pass sees: everything recorded up to now (a card recorded later is caught next pass).
        seen_until = conn.execute(select(cards.c.recorded_at).order_by(desc(cards.c.recorded_at)).limit(1)).scalar()
        query = (select(cards).select_from(cards.join(customers, customers.c.id == cards.c.customer_id, isouter=True))
                 .where(cards.c.exp_year == now.year, cards.c.exp_month == now.month,
                        or_(customers.c.default_payment_method.is_(None),
                            customers.c.default_payment_method == cards.c.payment_method_id))
                 .order_by(cards.c.customer_id, cards.c.payment_method_id, desc(cards.c.recorded_at)))
        if seen_until is not None:
            query = query.where(cards.c.recorded_at <= seen_until)
        if since is not None:
            query = query.where(cards.c.recorded_at > since - LATE_COMMIT_GRACE)
        candidates = conn.execute(query).mappings().all() if seen_until is not None else []

    queued = 0
    latest: dict[tuple[str, str], dict] = {}
    for card in candidates:
        latest.setdefault((card["customer_id"], card["payment_method_id"]), dict(card))
    for (customer_id, pm_id), card in latest.items():
        with db.transaction() as conn:
            ctx = HandlerContext(runtime=runtime, conn=conn, now=now, event=None, log=log)
            current = known_details(ctx, customer_id, pm_id) or {}
            if (current.get("exp_year"), current.get("exp_month")) != (now.year, now.month):
                continue  # renewed since (e.g. payment_method.automatically_updated): nothing expires
            email_id = send_card_expiring(ctx, customer_id, {"payment_method_id": pm_id, **current})
        ctx.run_after_commit()
        if email_id:
            queued += 1
            log.info("card_expiry.emailed", customer_id=customer_id, payment_method_id=pm_id, email_id=email_id)

    if seen_until is None and same_month:
        seen_until = since
    new_cursor = {"month": month, "seen_until": seen_until.isoformat() if seen_until else None}
    if new_cursor != cursor:
        with db.transaction() as conn:
            cursors.write(conn, db, CURSOR, new_cursor, now)
    return queued
