"""Process one stored event: claim it and run its handler in one transaction, then the after-commit work.

Correctness does not rest on the broker delivering once: the transaction locks the event row
(the claim is an UPDATE ... WHERE status is not processed/ignored) and does nothing if it is
already processed, so a redelivered or reconciled duplicate message is harmless. The claim counts
the try (`attempts`) and writes `processed` at once: the handler's failure rolls that back with
everything else, and the failure's own transaction counts the try instead (issue 17: there is no
separate claim transaction, no `processing` status and no lease any more; a worker killed
mid-handler leaves the event `received`, its message is redelivered and the reconciler finds it).

A failure is either permanent (a malformed payload: PermanentEventError, a value that does not
fit a column, or a coercion error on a payload value such as `amount_due: "12.50"`, NaN, a dict,
a year-10000 `created`: the same on every try) and ends `failed` at once with a one-line reason,
or transient (Stripe or the database unreachable...): then `failed_transient` and `redrive_at`
let the reconciler re-enqueue it with a slow backoff for 3 days after Dramatiq's own retries.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Table, bindparam, case, exists, select, update
from sqlalchemy.exc import DataError, DBAPIError

from handlers.context import PermanentEventError
from handlers.facts import remember
from handlers.registry import handler_for
from worker.pure.clock import utcnow
from worker.privacy.customer_data import REMOVED_MARK, is_stripped
from worker.intake.customer_prefetch import ensure_customer_known, note_without_key
from worker.intake.payment_prefetch import failed_payment
from worker.privacy.erasure import after_handler, hold_customer
from worker.intake.event_store import load_event
from worker.observe.log_context import ids_from_event_object
from worker.pure.message_log import bind_in_message
from worker.pure.sql_terms import none_of
from worker.infra.driver_sql import run
from worker.infra.unit_of_work import unit_of_work

COERCION_ERRORS = (ValueError, TypeError, AttributeError, UnicodeError)  # a payload value we cannot read
REDRIVE_BASE = timedelta(minutes=10)
REDRIVE_CAP = timedelta(hours=2)
CONFLICT_SQLSTATES = ("40P01", "40001")  # deadlock_detected, serialization_failure: the next try succeeds
CONFLICT_RETRIES = 4
DONE = ("processed", "ignored")  # an event in either status is never handled again (but by a replay)
log = structlog.get_logger("worker.intake.processing")


@dataclass(frozen=True)
class _Statements:
    read: Any
    claim: Any
    status: Any


@functools.lru_cache(maxsize=16)
def _built(events: Table) -> _Statements:
    """The statements every event runs, built once per table (not per event) with bound
    parameters, so SQLAlchemy's compiled cache finds them without rebuilding the expression."""
    by_id = events.c.id == bindparam("b_id")
    erasures = events.metadata.tables["erasures"]
    stripped = events.c.payload.startswith(REMOVED_MARK, autoescape=True)
    erased = exists().where(erasures.c.customer_id == bindparam("b_customer")).label("erased")
    return _Statements(
        read=select(events).where(by_id),
        # Locks the row (an UPDATE), counts the try and records the outcome the handler usually has,
        # in the handler's own transaction: a rollback undoes it with everything else. RETURNING the
        # row as it is now (an erasure may have stripped it since it was read) and whether its
        # customer is erased (asked after hold_customer: see handlers.facts.erased_in). A stripped
        # payload keeps its processed_at: whether it was processed before decides its status.
        claim=(update(events).where(by_id, none_of(events.c.status, DONE))
               .values(status="processed", attempts=events.c.attempts + 1,
                       processed_at=case((stripped, events.c.processed_at), else_=bindparam("b_at")),
                       last_error=None, lease_until=None, failed_transient=False, first_failed_at=None,
                       redrive_at=None)
               .returning(*events.c, erased)),
        status=update(events).where(by_id).values(status=bindparam("b_status"), last_error=bindparam("b_error"),
                                                  processed_at=bindparam("b_processed_at")),
    )


class EventNotFound(PermanentEventError):
    """Raised when a message names an event id that is not stored."""


def process_event(runtime, event_id: str, customer_id: str | None = None) -> str:
    """Process the event; return its final status. Raises on a transient failure (to be retried).

    One transaction (_run_handler) reads the event, holds its customer, claims the event and runs
    the handler; `customer_id` (the customer the webhook read in the payload: message_args) spares
    the read. With STRIPE_API_KEY the Stripe reads the handler needs (the customer, the failed
    payment) run first, outside any transaction, on the event as read then (a plain SELECT).
    """
    db = runtime.db
    try:
        try:
            known, prefetched = None, None
            if runtime.settings.stripe_api_key:  # checked first: without a key there is nothing to fetch
                with db.reading() as conn:
                    known = run(conn, _built(db.table("events")).read, {"b_id": event_id}).mappings().first()
                if known is None:
                    raise EventNotFound(f"event {event_id} is not stored")
                if known["status"] in DONE:
                    log.info("event.skipped", status=known["status"])
                    return known["status"]
                if not is_stripped(known["payload"]):
                    read_event = load_event(known)
                    ensure_customer_known(runtime, read_event)  # Stripe I/O, outside the handler's transaction
                    prefetched = failed_payment(runtime, read_event)  # the card and the decline (issue 14)
            return _run_handler_retrying_conflicts(runtime, event_id, known, prefetched, customer_id)
        except (DataError, OverflowError) as exc:  # the payload does not fit a column: the same every try
            reason = _one_line(getattr(exc, "orig", None) or exc)  # not the SQL and its parameters
            raise PermanentEventError(f"a value does not fit the schema: {reason}"[:1000]) from exc
        except PermanentEventError:
            raise
        except COERCION_ERRORS as exc:  # a payload value of the wrong type or form: the same every try
            raise PermanentEventError(f"a payload value cannot be read: {type(exc).__name__}: "
                                      f"{_one_line(exc)}"[:1000]) from exc
    except EventNotFound:
        raise
    except Exception as exc:
        _record_failure(db, event_id, exc)
        raise


def _run_handler_retrying_conflicts(runtime, event_id: str, known, prefetched, hint) -> str:
    """`_run_handler`, run again at once when PostgreSQL chose its transaction as a deadlock's or a
    serialization conflict's victim: that outcome is the database's, not the event's, and the next
    try succeeds once the other transaction ends. Two events of one customer both hold its row FOR
    SHARE, and both may then update it (customer.created and customer.updated together): one of them
    is rolled back. Retried here rather than through the broker, whose retry may be lost while it is
    down (the reconciler would find the event only after its re-drive pause). Nothing outside the
    transaction has happened yet: effects run after commit, Stripe reads before."""
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return _run_handler(runtime, event_id, known, prefetched, hint)
        except DBAPIError as exc:
            sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
            if sqlstate not in CONFLICT_SQLSTATES or attempt == CONFLICT_RETRIES:
                raise
            log.info("event.retrying_conflict", sqlstate=sqlstate, attempt=attempt)
            time.sleep(random.uniform(0.005, 0.05) * attempt)  # apart from the other transaction's retry
    raise AssertionError("unreachable")


def _record_failure(db, event_id: str, exc: Exception) -> None:
    """The try failed (its transaction rolled back): count it, keep the error, and for a transient
    failure the instant the reconciler re-drives it. An event processed meanwhile is left alone."""
    events = db.table("events")
    permanent = isinstance(exc, PermanentEventError)
    now = utcnow()
    error = f"{type(exc).__name__}: {exc}" if not permanent else _one_line(exc)
    with db.transaction() as conn:
        row = conn.execute(db.lock(select(events.c.attempts, events.c.first_failed_at)
                                   .where(events.c.id == event_id, events.c.status.not_in(DONE)))).first()
        if row is not None:
            attempts = row.attempts + 1
            conn.execute(update(events).where(events.c.id == event_id)
                         .values(status="failed", attempts=attempts, last_error=error[:2000], lease_until=None,
                                 failed_transient=not permanent, first_failed_at=row.first_failed_at or now,
                                 redrive_at=None if permanent else now + redrive_backoff(attempts)))
    log.warning("event.failed", error=error[:500], permanent=permanent)


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


def _run_handler(runtime, event_id: str, known=None, prefetched: dict | None = None,
                 hint: str | None = None) -> str:
    """Handle the event in one transaction: read it (or take `known`, read before the Stripe calls,
    or only the customer it names, `hint`), hold its customer, claim it (an UPDATE: the row is
    locked, the try counted, the outcome written), run the handler. A duplicate message finds it
    processed and does nothing."""
    db = runtime.db
    built = _built(db.table("events"))
    with unit_of_work(runtime, log=log, prefetched=prefetched) as ctx:
        conn = ctx.conn
        row = known
        if row is None and hint is None:  # a plain read: which customer to hold before the event row is locked
            row = run(conn, built.read, {"b_id": event_id}).mappings().first()
            if row is None:
                raise EventNotFound(f"event {event_id} is not stored")
            if row["status"] in DONE:
                log.info("event.skipped", status=row["status"])
                return row["status"]
        if row is not None:
            hint = None if is_stripped(row["payload"]) else event_customer_id(load_event(row))
        customer = hold_customer(conn, db, hint)  # before any other lock: see worker/privacy/erasure.py
        claimed = run(conn, built.claim, {"b_id": event_id, "b_at": utcnow(), "b_customer": hint}
                      ).mappings().first()
        if claimed is None:  # processed already (a duplicate whose transaction committed first), or not stored
            stored = run(conn, built.read, {"b_id": event_id}).mappings().first()
            if stored is None:
                raise EventNotFound(f"event {event_id} is not stored")
            log.info("event.skipped", status=stored["status"])
            return stored["status"]
        if is_stripped(claimed["payload"]):  # erased or pruned before it was (re)processed: nothing to act on
            before = claimed["processed_at"]  # the claim left it as it was
            status = "processed" if before else "ignored"
            run(conn, built.status, {"b_id": event_id, "b_status": status, "b_processed_at": before,
                                        "b_error": None if before else "payload removed"})
            log.info("event.payload_removed", status=status)
            return status
        event = load_event(claimed)
        customer_id = event_customer_id(event)
        if customer_id != hint:  # a message naming another customer: what was asked about that one does not count
            customer, hint = None, None
        bind_event(event)
        if known is None:
            note_without_key(runtime, event)  # a log line once per process, no I/O
        handler = handler_for(event.type)
        ctx.event, ctx.now = event, utcnow()
        if customer is not None:  # it exists, and whether it is erased cannot change before commit
            ctx.held_customer = customer_id
            remember(ctx, "customers", customer)  # read with the lock: the handler and the outbox use it
        if customer_id and customer_id == hint and (customer is not None or db.is_sqlite):
            ctx.erased[customer_id] = bool(claimed["erased"])  # asked after the hold (SQLite: one writer at a time)
        status = "processed"
        if handler is None:
            status = "ignored"
        else:
            result = handler(ctx, event)
            if result == "ignored":
                status = "ignored"
        # An erased customer stays erased: scrub what the handler wrote and strip this payload (same transaction).
        after_handler(ctx, event, customer_id)
        if status != "processed":  # the claim wrote `processed`
            run(conn, built.status, {"b_id": event_id, "b_status": status, "b_error": None,
                                        "b_processed_at": claimed["processed_at"]})
    log.info("event.processed", status=status)
    return status
