"""The dunning case's state machine: states are conditions, triggers are facts, one literal table.

A case follows one failed invoice from its first failed payment to an end: recovered (paid),
uncollectible (written off) or voided (invoice voided, subscription deleted). `apply` is the only
way a case changes state: it checks the table, writes the case with a guarded update (WHERE
version = :seen, so a concurrent writer can never be overwritten silently) and records the
transition in case_transitions (from, to, trigger, the Stripe event or the timer step, when).

Callers hold the case row locked (`lock_case`: SELECT ... FOR UPDATE on PostgreSQL; SQLite
serializes every transaction with BEGIN IMMEDIATE) for the whole transaction.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Table, bindparam, select

from handlers.context import HandlerContext
from worker.pure.clock import utcnow
from worker.pure.ids import new_id
from worker.pure.message_log import bind_case
from worker.pure.sql_terms import one_of

log = structlog.get_logger("handlers.dunning")

# -- states (conditions of the invoice's collection) ------------------------------------------
FAILING = "failing"                            # payment failed; reminders are running
DISRUPTION_SCHEDULED = "disruption_scheduled"  # the disruption date is fixed and announced
DISRUPTED = "disrupted"                        # the date passed unpaid: the platform was told to disrupt
RECOVERED = "recovered"                        # paid: the end we want
UNCOLLECTIBLE = "uncollectible"                # written off in Stripe
VOIDED = "voided"                              # invoice voided, or its subscription deleted

STATES = (FAILING, DISRUPTION_SCHEDULED, DISRUPTED, RECOVERED, UNCOLLECTIBLE, VOIDED)
OPEN_STATES = (FAILING, DISRUPTION_SCHEDULED, DISRUPTED)
TERMINAL_STATES = (RECOVERED, UNCOLLECTIBLE, VOIDED)

# -- triggers (facts: a Stripe event, or a timer step falling due) ----------------------------
PAYMENT_FAILED = "payment_failed"                  # invoice.payment_failed (a later attempt)
INVOICE_PAID = "invoice_paid"                      # invoice.paid / invoice.payment_succeeded
INVOICE_VOIDED = "invoice_voided"                  # invoice.voided
MARKED_UNCOLLECTIBLE = "marked_uncollectible"      # invoice.marked_uncollectible
SUBSCRIPTION_DELETED = "subscription_deleted"      # customer.subscription.deleted
DISRUPTION_WARNING_DUE = "disruption_warning_due"  # timer: the schedule_disruption step is due
DISRUPTION_DATE_PASSED = "disruption_date_passed"  # timer: the disrupt step is due, still unpaid
CUSTOMER_DELETED = "customer_deleted"              # customer.deleted, or an erasure (worker/privacy/erasure.py)

TRIGGERS = (PAYMENT_FAILED, INVOICE_PAID, INVOICE_VOIDED, MARKED_UNCOLLECTIBLE, SUBSCRIPTION_DELETED,
            DISRUPTION_WARNING_DUE, DISRUPTION_DATE_PASSED, CUSTOMER_DELETED)
OPENED = "opened"  # the trigger recorded when a case is created (from_state NULL -> failing)

# -- THE transition table: (state, trigger) -> next state. A pair not listed is invalid. --------
TRANSITIONS: dict[tuple[str, str], str] = {
    (FAILING, PAYMENT_FAILED): FAILING,
    (FAILING, DISRUPTION_WARNING_DUE): DISRUPTION_SCHEDULED,
    (FAILING, INVOICE_PAID): RECOVERED,
    (FAILING, INVOICE_VOIDED): VOIDED,
    (FAILING, MARKED_UNCOLLECTIBLE): UNCOLLECTIBLE,
    (FAILING, SUBSCRIPTION_DELETED): VOIDED,
    (FAILING, CUSTOMER_DELETED): VOIDED,

    (DISRUPTION_SCHEDULED, PAYMENT_FAILED): DISRUPTION_SCHEDULED,
    (DISRUPTION_SCHEDULED, DISRUPTION_DATE_PASSED): DISRUPTED,
    (DISRUPTION_SCHEDULED, INVOICE_PAID): RECOVERED,
    (DISRUPTION_SCHEDULED, INVOICE_VOIDED): VOIDED,
    (DISRUPTION_SCHEDULED, MARKED_UNCOLLECTIBLE): UNCOLLECTIBLE,
    (DISRUPTION_SCHEDULED, SUBSCRIPTION_DELETED): VOIDED,
    (DISRUPTION_SCHEDULED, CUSTOMER_DELETED): VOIDED,

    (DISRUPTED, PAYMENT_FAILED): DISRUPTED,
    (DISRUPTED, INVOICE_PAID): RECOVERED,
    (DISRUPTED, INVOICE_VOIDED): VOIDED,
    (DISRUPTED, MARKED_UNCOLLECTIBLE): UNCOLLECTIBLE,
    (DISRUPTED, SUBSCRIPTION_DELETED): VOIDED,
    (DISRUPTED, CUSTOMER_DELETED): VOIDED,
    # recovered, uncollectible and voided are ends: no trigger leaves them.
}


class DunningError(Exception):
    """Base class of the state machine's errors."""


class InvalidTransition(DunningError):
    """Raised when a trigger is not allowed in the case's current state (no row in TRANSITIONS)."""

    def __init__(self, case_id: str | None, state: str, trigger: str):
        self.case_id, self.state, self.trigger = case_id, state, trigger
        super().__init__(f"case {case_id}: trigger {trigger!r} is not allowed in state {state!r}")


class StaleCase(DunningError):
    """Raised when the case row changed since it was read (version moved): the transaction rolls back."""


def next_state(state: str, trigger: str, case_id: str | None = None) -> str:
    """The state `trigger` leads to from `state`; InvalidTransition when the table has no such row."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(case_id, state, trigger) from None


def transition_rows() -> list[dict[str, str]]:
    """The table as rows (for `dunning policy show` and the docs), in declaration order."""
    return [{"from": s, "trigger": t, "to": to} for (s, t), to in TRANSITIONS.items()]


def is_open(case: dict | None) -> bool:
    return bool(case) and case["state"] in OPEN_STATES


# -- persistence ------------------------------------------------------------------------------
def lock_case(ctx: HandlerContext, *, case_id: str | None = None, invoice_id: str | None = None) -> dict | None:
    """Read one case row locked for this transaction (by id or by invoice)."""
    by = "id" if case_id else "invoice_id"
    row = ctx.db.run(ctx.conn, ctx.db.lock(_case_by(ctx.table("cases"), by)),
                           {"b_key": case_id or invoice_id}).mappings().first()
    if row:
        bind_case(row)  # every later line of this message names the case, its invoice and customer
    return dict(row) if row else None


@functools.lru_cache(maxsize=16)
def _case_by(cases: Table, by: str):
    """The case by id or by invoice, built once (a bound parameter); the caller locks it."""
    return select(cases).where(cases.c[by] == bindparam("b_key"))


def open_case(ctx: HandlerContext, values: dict[str, Any], *, event_id: str | None) -> dict | None:
    """Insert a new case in `failing` (unique per invoice); None when another writer opened it first."""
    cases = ctx.table("cases")
    row = {"id": new_id("dc"), "state": FAILING, "version": 0, "opened_at": ctx.now, "updated_at": ctx.now,
           **values}
    # RETURNING: the inserted row as stored (defaults included), no second read; it is ours
    # until commit (nobody else sees it before).
    stored = ctx.db.insert_new_row(ctx.conn, cases, row, "invoice_id")
    if stored is None:
        return None
    ctx.opened_cases.add(row["id"])
    _record(ctx, row["id"], None, FAILING, OPENED, event_id=event_id, step=None)
    bind_case(stored)  # the rest of this message's log lines name the case it opened
    log.info("case.opened", case_id=row["id"], invoice_id=row["invoice_id"], schedule=row["schedule"])
    return dict(stored)


def update_case(ctx: HandlerContext, case: dict, changes: dict[str, Any]) -> dict:
    """Write `changes` to the case if nobody else did since it was read; return the new row."""
    row = ctx.db.update_by(  # RETURNING: the new row (still locked by this update), no re-read
        ctx.conn, ctx.table("cases"), {**changes, "version": case["version"] + 1, "updated_at": ctx.now},
        returning=True, id=case["id"], version=case["version"]).mappings().first()
    if row is None:
        raise StaleCase(f"case {case['id']} changed since version {case['version']}")
    bind_case(row)
    return dict(row)


def apply(ctx: HandlerContext, case: dict, trigger: str, *, event_id: str | None = None,
          step: int | None = None, changes: dict[str, Any] | None = None) -> dict:
    """Move the (locked) case by `trigger`, write `changes` with it, record the transition.

    An end state cancels every pending step (the timer is cleared). Raises InvalidTransition,
    after logging it, when the table does not allow the trigger: nothing is written then.
    """
    try:
        to_state = next_state(case["state"], trigger, case["id"])
    except InvalidTransition as exc:
        log.warning("case.invalid_transition", case_id=case["id"], state=case["state"], trigger=trigger,
                    event_id=event_id, step=step, error=str(exc))
        raise
    values = dict(changes or {})
    values["state"] = to_state
    if to_state in TERMINAL_STATES:
        values.update(next_step=None, next_step_at=None, closed_at=ctx.now)
    new = update_case(ctx, case, values)
    if to_state == RECOVERED:
        ctx.recovered_cases.add(case["id"])
    _record(ctx, case["id"], case["state"], to_state, trigger, event_id=event_id, step=step)
    log.info("case.transitioned", case_id=case["id"], invoice_id=case["invoice_id"], from_state=case["state"],
             to_state=to_state, trigger=trigger, event_id=event_id, step=step)
    return new


def _record(ctx: HandlerContext, case_id: str, from_state: str | None, to_state: str, trigger: str, *,
            event_id: str | None, step: int | None) -> None:
    ctx.db.insert(ctx.conn, ctx.table("case_transitions"), {
        "id": new_id("tr"), "case_id": case_id, "from_state": from_state, "to_state": to_state, "trigger": trigger,
        "event_id": event_id, "step": step, "at": utcnow()})  # the real instant: orders two transitions of one transaction


@functools.lru_cache(maxsize=16)
def open_cases_of_customer(cases: Table):
    """The ids of the customer's open cases (oldest first), built once: run with `b_customer`."""
    return (select(cases.c.id).where(cases.c.customer_id == bindparam("b_customer"), one_of(cases.c.state, OPEN_STATES))
            .order_by(cases.c.opened_at, cases.c.id))


def open_cases_of_account(ctx: HandlerContext, account_id: str, *, exclude: str | None = None) -> list[dict]:
    rows = ctx.db.run(ctx.conn, _open_cases_of_account(ctx.table("cases")), {"b_account": account_id}).mappings()
    return [dict(r) for r in rows.all() if r["id"] != exclude]


@functools.lru_cache(maxsize=16)
def _open_cases_of_account(cases: Table):
    return (select(cases).where(cases.c.account_id == bindparam("b_account"), one_of(cases.c.state, OPEN_STATES))
            .order_by(cases.c.id))


def step_due_at(first_failed_at: datetime, day: int) -> datetime:
    """When a step of `day` falls due: days are counted from the first failed payment."""
    return first_failed_at + timedelta(days=day)
