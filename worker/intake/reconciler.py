"""The reconciler: a stored event is always processed eventually, even if the broker lost it.

An event stays `received` when its enqueue failed (broker down) or the broker lost the message
(a Redis restart without persistence). When the events queue is empty, anything still
`received` after a short grace was lost and is enqueued again; under a backlog only events
older than a long grace are, so a busy queue is not flooded with copies. An event whose worker
died mid-handler is still `received` (its transaction rolled back): found the same way. (A
`processing` event whose lease lapsed is enqueued again too: only a version before issue 17
wrote that status.) Duplicates are harmless: processing locks the event row and skips it once
processed.

A `failed` event whose last failure was transient (Stripe 503 during the customer fetch, say)
outlasted Dramatiq's quick retries: it is re-driven at its `redrive_at` (a slower backoff, up
to 2 h apart) for REDRIVE_WINDOW (3 days, Stripe's own retry window) after it first failed,
then left for `dunning events replay --failed` and counted on /metrics
(dunning_events_redrive_exhausted). A permanent failure (malformed payload) is never re-driven.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, func, select, update

from worker.pure.clock import utcnow
from worker.intake.event_store import mark_enqueued, stale_event_ids

SHORT_GRACE = timedelta(seconds=60)
LONG_GRACE = timedelta(minutes=30)
REDRIVE_WINDOW = timedelta(days=3)
REDRIVE_BATCH = 500
REDRIVE_BACKSTOP = timedelta(hours=2)  # a re-driven event neither processed nor failed again by then
log = structlog.get_logger("worker.intake.reconciler")


def queue_is_empty(broker, queue_name: str = "events") -> bool:
    """No message is waiting on the queue (in-flight ones don't count: after a Redis restart the
    `.msgs` hash can keep entries of a dead worker for a long time, which is not a backlog).
    Redis and RabbitMQ alike (worker.queue.queue_state); the stub broker is always empty."""
    from worker.queue.queue_state import waiting
    return waiting(broker, queue_name) == 0


def reconcile(runtime, now: datetime) -> int:
    """Re-enqueue events that should have been processed by now; return how many."""
    try:
        grace = SHORT_GRACE if queue_is_empty(runtime.broker) else LONG_GRACE
    except Exception as exc:
        log.warning("reconcile.broker_unavailable", error=str(exc)[:200])
        return 0
    ids = stale_event_ids(runtime.db, now, grace)
    sent = 0
    for event_id in ids:
        try:
            runtime.actors.process_event.send(event_id)
        except Exception as exc:
            log.warning("reconcile.enqueue_failed", event_id=event_id, error=str(exc)[:200])
            break
        mark_enqueued(runtime.db, event_id)
        sent += 1
    if sent:
        log.info("reconcile.requeued", count=sent)
    return sent + redrive_failed(runtime, now)


def redrivable(table, now: datetime):
    """Failed transiently, due again, and still within the window."""
    return and_(table.c.status == "failed", table.c.failed_transient.is_(True),
                table.c.first_failed_at > now - REDRIVE_WINDOW, table.c.redrive_at <= now)


def redrive_failed(runtime, now: datetime) -> int:
    """Re-enqueue failed events whose transient failure may be over; return how many."""
    db = runtime.db
    events = db.table("events")
    with db.reading() as conn:
        ids = list(conn.execute(select(events.c.id).where(redrivable(events, now))
                                .order_by(events.c.redrive_at).limit(REDRIVE_BATCH)).scalars())
    sent = 0
    for event_id in ids:
        with db.transaction() as conn:  # not again before its next failure sets a new redrive_at, or the
            # backstop passes (a message lost, a worker killed mid-handler: the event stays `failed`)
            conn.execute(update(events).where(events.c.id == event_id, events.c.status == "failed")
                         .values(redrive_at=utcnow() + REDRIVE_BACKSTOP, enqueued_at=utcnow()))
        try:
            runtime.actors.process_event.send(event_id)
        except Exception as exc:
            log.warning("reconcile.redrive_failed", event_id=event_id, error=str(exc)[:200])
            break
        sent += 1
    if sent:
        log.info("reconcile.redriven", count=sent)
    return sent


def exhausted_count(conn, db, now: datetime) -> int:
    """Transient failures past the re-drive window: left for `dunning events replay --failed`."""
    events = db.table("events")
    return int(conn.execute(select(func.count()).select_from(events).where(
        events.c.status == "failed", events.c.failed_transient.is_(True),
        events.c.first_failed_at <= now - REDRIVE_WINDOW)).scalar() or 0)
