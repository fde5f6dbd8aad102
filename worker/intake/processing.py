"""Process one stored event: claim it, run its handler in one transaction, then the after-commit work.

Correctness does not rest on the broker delivering once: the final transaction locks the event
row and does nothing if it is already processed, so a redelivered or reconciled duplicate
message is harmless.

A failure is either permanent (a malformed payload: PermanentEventError, a value that does not
fit a column, or a coercion error on a payload value such as `amount_due: "12.50"`, NaN, a dict,
a year-10000 `created`: the same on every try) and ends `failed` at once with a one-line reason,
or transient (Stripe or the database unreachable...): then `failed_transient` and `redrive_at`
let the reconciler re-enqueue it with a slow backoff for 3 days after Dramatiq's own retries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import DataError

from handlers.context import PermanentEventError
from handlers.registry import handler_for
from worker.pure.clock import utcnow
from worker.privacy.customer_data import is_stripped
from worker.intake.customer_prefetch import ensure_customer_known
from worker.intake.payment_prefetch import failed_payment
from worker.privacy.erasure import after_handler, hold_customer
from worker.intake.event_store import load_event
from worker.observe.log_context import ids_from_event_object
from worker.pure.message_log import bind_in_message
from worker.infra.unit_of_work import unit_of_work

LEASE = timedelta(minutes=5)
COERCION_ERRORS = (ValueError, TypeError, AttributeError, UnicodeError)  # a payload value we cannot read
REDRIVE_BASE = timedelta(minutes=10)
REDRIVE_CAP = timedelta(hours=2)
log = structlog.get_logger("worker.intake.processing")


@dataclass(frozen=True)
class _Statements:
    claim: Any
    lock: Any
    finish: Any


@functools.lru_cache(maxsize=16)
def _built(events: Table, sqlite: bool = False) -> _Statements:
    """The three statements every event runs, built once per table (not per event) with bound
    parameters, so SQLAlchemy's compiled cache finds them without rebuilding the expression."""
    by_id = events.c.id == bindparam("b_id")
    lock = select(events).where(by_id)
    return _Statements(
        claim=(update(events).where(by_id, events.c.status.in_(("received", "processing", "failed")))
               .values(status="processing", attempts=events.c.attempts + 1, lease_until=bindparam("b_lease"))
               .returning(*events.c)),
        lock=lock if sqlite else lock.with_for_update(),  # SQLite: BEGIN IMMEDIATE holds the write lock
        finish=update(events).where(by_id).values(
            status=bindparam("b_status"), processed_at=bindparam("b_at"), last_error=None, lease_until=None,
            failed_transient=False, first_failed_at=None, redrive_at=None),
    )


class EventNotFound(PermanentEventError):
    """Raised when a message names an event id that is not stored."""


def process_event(runtime, event_id: str) -> str:
    """Process the event; return its final status. Raises on a transient failure (to be retried)."""
    db = runtime.db
    events = db.table("events")
    with db.transaction() as conn:
        claimed = conn.execute(_built(events).claim, {"b_id": event_id, "b_lease": utcnow() + LEASE}
                               ).mappings().first()
        if claimed is None:
            status = conn.execute(select(events.c.status).where(events.c.id == event_id)).scalar()
            if status is None:
                raise EventNotFound(f"event {event_id} is not stored")
            log.info("event.skipped", status=status)
            return status

    try:
        try:
            claimed_event = load_event(claimed)
            ensure_customer_known(runtime, claimed_event)  # Stripe I/O, outside the handler's transaction
            prefetched = failed_payment(runtime, claimed_event)  # the card and the decline (issue 14)
            return _run_handler(runtime, event_id, event_customer_id(claimed_event), prefetched)
        except (DataError, OverflowError) as exc:  # the payload does not fit a column: the same every try
            reason = _one_line(getattr(exc, "orig", None) or exc)  # not the SQL and its parameters
            raise PermanentEventError(f"a value does not fit the schema: {reason}"[:1000]) from exc
        except PermanentEventError:
            raise
        except COERCION_ERRORS as exc:  # a payload value of the wrong type or form: the same every try
            raise PermanentEventError(f"a payload value cannot be read: {type(exc).__name__}: "
                                      f"{_one_line(exc)}"[:1000]) from exc
    except Exception as exc:
        permanent = isinstance(exc, PermanentEventError)
        now = utcnow()
        error = f"{type(exc).__name__}: {exc}" if not permanent else _one_line(exc)
        with db.transaction() as conn:
            first = conn.execute(select(events.c.first_failed_at).where(events.c.id == event_id)).scalar()
            conn.execute(update(events).where(events.c.id == event_id, events.c.status == "processing")
                         .values(status="failed", last_error=error[:2000], lease_until=None,
                                 failed_transient=not permanent, first_failed_at=first or now,
                                 redrive_at=None if permanent else now + redrive_backoff(claimed["attempts"])))
        log.warning("event.failed", error=error[:500], permanent=permanent)
        raise


def event_customer_id(event) -> str | None:
    """The customer an event is about (the object's own id for a customer, else its `customer`)."""
    obj = (event.payload.get("data") or {}).get("object")
    return ids_from_event_object(obj).get("customer_id") if isinstance(obj, dict) else None


def _one_line(exc) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def redrive_backoff(attempts: int) -> timedelta:
    """The reconciler's pace after Dramatiq's quick retries: 10 min, 20 min ... capped at 2 h."""
    from worker.queue.broker import MAX_RETRIES
    return min(REDRIVE_BASE * (2 ** max(0, attempts - MAX_RETRIES - 1)), REDRIVE_CAP)


def bind_event(event) -> None:
    """Name the event's type and the invoice/customer it concerns on every later log line."""
    obj = (event.payload.get("data") or {}).get("object")
    ids = ids_from_event_object(obj) if isinstance(obj, dict) else {}
    bind_in_message(event_type=event.type, **ids)


def _run_handler(runtime, event_id: str, customer_id: str | None = None, prefetched: dict | None = None) -> str:
    db = runtime.db
    events = db.table("events")
    with unit_of_work(runtime, log=log, prefetched=prefetched) as ctx:
        conn = ctx.conn
        held = hold_customer(conn, db, customer_id)  # before any other lock: see worker/privacy/erasure.py
        row = conn.execute(_built(events, db.is_sqlite).lock, {"b_id": event_id}).mappings().first()
        if row is None:
            raise EventNotFound(f"event {event_id} is not stored")
        if row["status"] in ("processed", "ignored"):
            return row["status"]
        if is_stripped(row["payload"]):  # erased or pruned before it was (re)processed: nothing to act on
            status = "processed" if row["processed_at"] else "ignored"
            conn.execute(update(events).where(events.c.id == event_id).values(
                status=status, lease_until=None, last_error=None if row["processed_at"] else "payload removed"))
            log.info("event.payload_removed", status=status)
            return status
        event = load_event(row)
        bind_event(event)
        handler = handler_for(event.type)
        ctx.event, ctx.now = event, utcnow()
        if held:  # it exists, and whether it is erased cannot change before commit
            ctx.held_customer = customer_id
        status = "processed"
        if handler is None:
            status = "ignored"
        else:
            result = handler(ctx, event)
            if result == "ignored":
                status = "ignored"
        # An erased customer stays erased: scrub what the handler wrote and strip this payload (same transaction).
        after_handler(ctx, event, event_customer_id(event))
        conn.execute(_built(events).finish, {"b_id": event_id, "b_status": status, "b_at": utcnow()})
    log.info("event.processed", status=status)
    return status
