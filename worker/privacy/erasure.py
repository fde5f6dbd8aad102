"""Erase a customer's personal data, record that it was done, and keep it erased.

Three ways in, one routine (`erase_in`): `dunning customers erase`, `POST /customers/{id}/erase`
(both act at once) and Stripe's `customer.deleted` (acted on when processed, inside its own
transaction, so that event's payload goes too). What goes and what stays is the map in
worker/privacy/customer_data.py: ids, amounts, currencies, states, times and counts stay, so stats and
/metrics keep their figures. An open case of the customer closes with the trigger
`customer_deleted`, sending no email.

It holds: a later event about an erased customer is processed as usual and `after_handler`
scrubs what the handler wrote (and the event's payload) in the same transaction; the outbox
refuses to address mail to an erased customer and the sender cancels any such row it finds.
Erasing twice is harmless: the first request is the record, a second scrubs again.
"""

from __future__ import annotations

import functools
import re

import structlog
from sqlalchemy import Table, bindparam, select, update

from handlers.context import HandlerContext
from worker.infra.driver_sql import run
from handlers.facts import erased_in, is_erased  # noqa: F401  (erased_in: the domain asks it too)
from worker.privacy import customer_data as cd
from worker.infra.unit_of_work import unit_of_work

log = structlog.get_logger("worker.privacy.erasure")

_ADDRESS_LIKE = re.compile(r"[^\s@]+@[^\s@]+")
MAX_REASON = 500


class UnknownCustomer(LookupError):
    """Raised when an erasure or export names a customer we hold nothing about."""


class ErasureRefused(ValueError):
    """Raised when an erasure request is malformed (no reason)."""


def clean_reason(reason: str | None) -> str:
    """The reason as stored: one line, addresses masked (the record holds no personal data)."""
    value = " ".join((reason or "").split())
    if not value:
        raise ErasureRefused("a reason is required")
    return _ADDRESS_LIKE.sub("[address]", value)[:MAX_REASON]


def erase_in(ctx: HandlerContext, customer_id: str, *, requested_by: str, reason: str,
             event_id: str | None = None) -> dict:
    """Erase within the caller's transaction; return the record and the rows touched per table."""
    conn, db = ctx.conn, ctx.db
    tables = db.tables
    customers = tables["customers"]
    # Locked first: an event of this customer being processed holds the row FOR SHARE (after_handler)
    # until it commits, so every row it wrote is visible to the scrub below; a later one waits for us.
    known = conn.execute(db.lock(select(customers.c.id).where(customers.c.id == customer_id))).first() is not None
    if not known and not is_erased(conn, db, customer_id):
        raise UnknownCustomer(f"no customer {customer_id} is known")
    record = {"customer_id": customer_id, "erased_at": ctx.now, "requested_by": requested_by[:200],
              "event_id": event_id, "reason": clean_reason(reason)}
    first = db.insert_new(conn, tables["erasures"], record, "customer_id")
    ctx.erased[customer_id] = True
    ctx.rows.clear()  # the scrub below rewrites rows this transaction may have kept
    closed = close_open_cases(ctx, customer_id, event_id)
    touched = scrub(conn, tables, customer_id, include_events=True)
    _remove_local_copies(ctx, customer_id)
    stored = conn.execute(select(tables["erasures"]).where(tables["erasures"].c.customer_id == customer_id)
                          ).mappings().first()
    log.info("customer.erased", customer_id=customer_id, first=first, event_id=event_id, cases_closed=closed,
             rows=sum(touched.values()))
    return {"erasure": dict(stored), "already_erased": not first, "cases_closed": closed, "rows": touched}


def erase_customer(runtime, customer_id: str, *, requested_by: str, reason: str) -> dict:
    """Erase now (CLI and admin API): one transaction, then the after-commit work and SQLite's WAL."""
    clean_reason(reason)  # refuse before touching anything
    with unit_of_work(runtime, log=log) as ctx:  # after commit: local copies removed, SQLite's WAL flushed
        result = erase_in(ctx, customer_id, requested_by=requested_by, reason=reason)
    return result


class Erasures:
    """The domain's Erasures port (handlers/ports.py): erase inside the handler's transaction."""

    def erase(self, ctx: HandlerContext, customer_id: str, *, requested_by: str, reason: str,
              event_id: str | None = None) -> dict:
        return erase_in(ctx, customer_id, requested_by=requested_by, reason=reason, event_id=event_id)


def _remove_local_copies(ctx: HandlerContext, customer_id: str) -> None:
    """After commit: the `.eml` and notice `.json` files written without SendGrid / a platform URL."""
    emails, notices = ctx.table("emails"), ctx.table("platform_notices")
    files = [ctx.settings.email_outbox_dir / f"{i}.eml" for i in ctx.conn.execute(
        select(emails.c.id).where(emails.c.customer_id == customer_id)).scalars()]
    files += [ctx.settings.notice_outbox_dir / f"{i}.json" for i in ctx.conn.execute(
        select(notices.c.id).where(notices.c.customer_id == customer_id)).scalars()]

    def remove() -> None:
        for path in files:
            path.unlink(missing_ok=True)
    ctx.after_commit(remove)
    ctx.after_commit(lambda: flush_sqlite(ctx.db))


def close_open_cases(ctx: HandlerContext, customer_id: str, event_id: str | None) -> int:
    """Close the customer's open cases with `customer_deleted`: no email, the account's timeline moves."""
    from handlers import accounts, dunning
    cases = ctx.table("cases")
    ids = list(ctx.conn.execute(select(cases.c.id).where(cases.c.customer_id == customer_id,
                                                         cases.c.state.in_(dunning.OPEN_STATES))).scalars())
    for case_id in ids:
        case = dunning.lock_case(ctx, case_id=case_id)
        if not dunning.is_open(case):
            continue
        case = dunning.apply(ctx, case, dunning.CUSTOMER_DELETED, event_id=event_id)
        accounts.case_closed(ctx, case, dunning.CUSTOMER_DELETED)
    return len(ids)


def scrub(conn, tables, customer_id: str, *, include_events: bool) -> dict[str, int]:
    """Overwrite the erased columns of every row of the customer; return rows touched per table.

    Without `include_events` the events table is skipped (its LIKE scan is for a real erasure;
    after a later event only that event's payload needs stripping: see after_handler).
    """
    keys = cd.customer_keys(conn, tables, customer_id)
    touched: dict[str, int] = {}
    for name in cd.customer_tables(tables):
        changes = cd.ERASED.get(name)
        if not changes or (name == "events" and not include_events):
            continue
        table = tables[name]
        where = cd.row_filter(table, name, customer_id, keys)
        if where is None:
            continue
        pk = list(table.primary_key.columns)[0]
        needed = [pk, *{table.c[c] for c in changes}, *([table.c.status] if "status" in table.c else [])]
        rows = conn.execute(select(*needed).where(where)).mappings().all()
        count = 0
        for row in rows:
            values = cd.erased_values(name, row)
            if any(row.get(k) != v for k, v in values.items()):
                conn.execute(update(table).where(pk == row[pk.name]).values(**values))
                count += 1
        touched[name] = count
    return touched


def hold_customer(conn, db, customer_id: str | None):
    """The first lock of an event's transaction: its customer's row FOR SHARE (PostgreSQL).

    erase_in takes the row FOR UPDATE first too, so an erasure and an event of the same customer
    are serialized with the same lock order (customer, then event, cases, rows): the erasure sees
    everything the event wrote, or the event sees the erasure (after_handler). SQLite serializes
    every writer already. The row when one was held (no erasure can land before this commits):
    read whole, with the lock, so the handler and the outbox do not read it again (issue 17).
    """
    if not customer_id or db.is_sqlite:
        return None
    return run(conn, _held_customer(db.tables["customers"]), {"b_id": customer_id}).mappings().first()


@functools.lru_cache(maxsize=16)
def _held_customer(customers: Table):
    """`hold_customer`'s SELECT ... FOR SHARE, built once (a bound parameter)."""
    return select(customers).where(customers.c.id == bindparam("b_id")).with_for_update(read=True)


def after_handler(ctx: HandlerContext, event, customer_id: str | None) -> bool:
    """After any handler: if the event is about an erased customer, scrub what it wrote, strip it.

    Runs in the handler's transaction (processing._run_handler), so nothing it wrote is ever
    committed with personal data. True when the customer is erased.
    """
    tables = ctx.db.tables
    if not erased_in(ctx, customer_id):
        return False
    ctx.rows.clear()  # the scrub rewrites rows this transaction may have kept
    scrub(ctx.conn, tables, customer_id, include_events=False)
    events = tables["events"]
    payload = ctx.conn.execute(select(events.c.payload).where(events.c.id == event.id)).scalar()
    if payload is not None and not cd.is_stripped(payload):
        ctx.conn.execute(update(events).where(events.c.id == event.id)
                         .values(payload=cd.stripped_payload(payload, "erasure")))
    log.info("event.erased_customer", customer_id=customer_id)
    return True


def strip_if_erased(db, envelope):
    """For an event no handler will process (an ignored type): its payload stripped before it is
    stored when it is about an erased customer (the webhook calls this for those only)."""
    import dataclasses
    import json

    from worker.observe.log_context import ids_from_event_object
    try:
        obj = (json.loads(envelope.raw).get("data") or {}).get("object")
    except ValueError:
        return envelope
    customer_id = ids_from_event_object(obj).get("customer_id") if isinstance(obj, dict) else None
    if not customer_id:
        return envelope
    with db.reading() as conn:
        if not is_erased(conn, db, customer_id):
            return envelope
    return dataclasses.replace(envelope, raw=cd.stripped_payload(envelope.raw, "erasure"))


def flush_sqlite(db) -> None:
    """SQLite: move the WAL into the file and truncate it, so old page images do not linger there.

    (secure_delete, set on every connection in worker/infra/db.py, zeroes freed space in the file.)
    """
    if not db.is_sqlite:
        return
    try:
        raw = db.engine.raw_connection()  # autocommit (worker/infra/db.py): no BEGIN around the checkpoint
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.close()
    except Exception as exc:  # noqa: BLE001 - a busy checkpoint is retried by SQLite's own auto-checkpoint
        log.warning("sqlite.checkpoint_failed", error=str(exc)[:200])
