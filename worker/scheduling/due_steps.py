"""Run the durable timers: enqueue the cases whose next step is due, then run each case's due steps.

The scheduler calls `enqueue_due_steps` every pass (one indexed range query, a lease so a backlog or
a second host does not queue a case twice); the `run_case_steps` actor calls `run_due_steps`, one
unit of work per step, the step itself decided by the domain (handlers/steps.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import or_, select, update

from handlers import dunning, verification
from handlers.steps import is_due, run_next_step
from worker.infra.unit_of_work import unit_of_work
from worker.pure.message_log import bind_case
from worker.stripe import case_facts

log = structlog.get_logger("handlers.steps")

ENQUEUE_BATCH = 1000
ENQUEUE_LEASE = timedelta(seconds=60)  # as the reconciler's short grace
MAX_PASSES = 20                        # steps per message at most (each pass runs or postpones one)


def enqueue_due_steps(runtime, now: datetime) -> int:
    """Enqueue run_case_steps(case_id, now) for every case whose next step is due; return how many."""
    cases = runtime.db.table("cases")
    stmt = (select(cases.c.id).where(cases.c.next_step_at <= now,
                                     or_(cases.c.steps_enqueued_at.is_(None),
                                         cases.c.steps_enqueued_at <= now - ENQUEUE_LEASE))
            .order_by(cases.c.next_step_at).limit(ENQUEUE_BATCH))
    with runtime.db.transaction() as conn:
        due = list(conn.execute(stmt).scalars())
        if due:
            # On the pass's clock (`tick --at` has its own timeline); running the message clears it.
            conn.execute(update(cases).where(cases.c.id.in_(due)).values(steps_enqueued_at=now))
    as_of = now.isoformat() + "Z"
    for case_id in due:
        runtime.actors.run_case_steps.send(case_id, as_of)
    if due:
        log.info("steps.enqueued", cases=len(due), as_of=as_of)
    return len(due)


def run_due_steps(runtime, case_id: str, as_of: datetime) -> int:
    """Run each step of the case due as of `as_of`, one transaction each; return how many passes ran.

    With STRIPE_API_KEY the invoice, subscription and customer are read from Stripe once, before
    the first pass (outside any transaction), and applied under the case lock.
    """
    runtime.db.tables  # reflect before the first transaction (on SQLite reflecting inside one would wait on it)
    ran = 0
    facts = None
    for _ in range(MAX_PASSES):
        if not is_due(_peek(runtime, case_id), as_of):
            break
        if facts is None and case_facts.enabled(runtime):
            facts = case_facts.read(runtime, _peek(runtime, case_id))
            case_facts.verify_siblings(runtime, _peek(runtime, case_id))  # every invoice the email will list
        with unit_of_work(runtime, log=log, as_of=as_of) as ctx:
            case = dunning.lock_case(ctx, case_id=case_id)
            if ran == 0 and case is not None and case.get("steps_enqueued_at") is not None:
                # this message ran: the scheduler may queue the next
                runtime.db.update_by(ctx.conn, runtime.db.table("cases"), {"steps_enqueued_at": None}, id=case_id)
            if not is_due(case, as_of):
                break
            if facts is not None:
                case = verification.apply(ctx, case, facts)
            if case is not None:
                run_next_step(ctx, case, facts=facts)
        ran += 1
    return ran


def _peek(runtime, case_id: str) -> dict | None:
    with runtime.db.reading() as conn:
        row = runtime.db.row_by(conn, runtime.db.table("cases"), id=case_id)
    if row is None:
        return None
    bind_case(row)  # the message's lines name the case it runs (from this read: no lookup of its own)
    return row
