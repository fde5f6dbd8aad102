"""The reconciler: a stored event is always processed eventually, even if the broker lost it.

An event stays `received` when its enqueue failed (broker down) or the broker lost the message
(a Redis restart without persistence). When the events queue is empty, anything still
`received` after a short grace was lost and is enqueued again; under a backlog only events
older than a long grace are, so a busy queue is not flooded with copies. A `processing` event
whose lease lapsed (its worker died) is enqueued again too. Duplicates are harmless: processing
locks the event row and skips it once processed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from worker.event_store import mark_enqueued, stale_event_ids

SHORT_GRACE = timedelta(seconds=60)
LONG_GRACE = timedelta(minutes=30)
log = structlog.get_logger("worker.reconciler")


def queue_is_empty(broker, queue_name: str = "events") -> bool:
    """No message is waiting on the queue (in-flight ones don't count: after a Redis restart the
    `.msgs` hash can keep entries of a dead worker for a long time, which is not a backlog).
    Redis and RabbitMQ alike (worker.queue_state); the stub broker is always empty."""
    from worker.queue_state import waiting
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
    return sent
