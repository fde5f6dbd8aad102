"""The sweeper of the Stripe jobs: payment-link requests and card retries whose message was lost.

Both jobs are rows first (payment_links `requested`, card_retries `pending`) and a broker message
after commit. If the broker was down at that moment, or a worker died holding the message, the
row would wait forever; this sweep (one scheduler job) sends its id again. Running a job twice
is harmless: each carries its Stripe idempotency key and updates its row guarded on its status.
Only rows younger than MAX_AGE are swept: after that a person should look (`dunning cards show`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, or_, select, update

log = structlog.get_logger("worker.stripe.jobs")

STALE_AFTER = timedelta(minutes=10)
MAX_AGE = timedelta(days=3)
BATCH = 200


def sweep_stripe_jobs(runtime, now: datetime) -> int:
    """Re-enqueue stale payment-link requests and card retries; return how many were sent."""
    db = runtime.db
    jobs = (
        ("payment_links", "requested", "requested_at", runtime.actors.create_payment_link),
        ("card_retries", "pending", "created_at", runtime.actors.retry_invoice),
    )
    sent = 0
    for table_name, waiting, born, actor in jobs:
        table = db.table(table_name)
        stale = or_(table.c.enqueued_at.is_(None), table.c.enqueued_at < now - STALE_AFTER)
        with db.transaction() as conn:
            ids = [r[0] for r in conn.execute(db.lock(
                select(table.c.id).where(and_(table.c.status == waiting, stale,
                                              table.c[born] > now - MAX_AGE))
                .order_by(table.c[born]).limit(BATCH)))]
            if ids:
                conn.execute(update(table).where(table.c.id.in_(ids)).values(enqueued_at=now))
        for row_id in ids:
            try:
                actor.send(row_id)
                sent += 1
            except Exception as exc:  # broker still down: the next pass tries again
                log.warning("stripe_jobs.enqueue_failed", table=table_name, id=row_id, error=str(exc)[:300])
                break
        if ids:
            log.info("stripe_jobs.requeued", table=table_name, count=len(ids))
    return sent
