"""Durable timers: each case's next due step is a column (cases.next_step, cases.next_step_at).

The scheduler finds due cases with an indexed range query (cost grows with the due cases, not
with all cases) and enqueues their ids; `run_due_steps` then runs every step due as of the
given instant, in order, one transaction per step. A step runs at most once: it is chosen by
the case's `next_step` index read under the case row lock, and the same transaction advances
the index with a guarded update (WHERE version = :seen); its email's dedupe key
`case:<id>:step:<n>` makes a second send impossible even if all that failed. A late step (the
scheduler was down) still runs, once, when the next pass finds it.

A case whose steps message is queued is not queued again before ENQUEUE_LEASE lapses
(cases.steps_enqueued_at, cleared when the message runs): a backlog, or a second scheduler
host, does not fill the broker with copies; a lost message is queued again after the lease.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import or_, select, update

from handlers import accounts, dunning
from handlers.context import HandlerContext
from worker.clock import utcnow

log = structlog.get_logger("handlers.steps")

ENQUEUE_BATCH = 1000
ENQUEUE_LEASE = timedelta(seconds=60)  # as the reconciler's short grace


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
    """Run each step of the case due as of `as_of`, oldest first, one transaction each; return how many ran."""
    runtime.db.tables  # reflect before the first transaction (on SQLite reflecting inside one would wait on it)
    ran = 0
    while True:
        with runtime.db.transaction() as conn:
            ctx = HandlerContext(runtime=runtime, conn=conn, now=utcnow(), event=None, log=log)
            case = dunning.lock_case(ctx, case_id=case_id)
            if ran == 0 and case is not None and case.get("steps_enqueued_at") is not None:
                cases = runtime.db.table("cases")  # this message ran: the scheduler may queue the next
                conn.execute(update(cases).where(cases.c.id == case_id).values(steps_enqueued_at=None))
            if not is_due(case, as_of):
                break
            run_next_step(ctx, case)
        ctx.run_after_commit()
        ran += 1
    return ran


def is_due(case: dict | None, as_of: datetime) -> bool:
    return (dunning.is_open(case) and case["next_step"] is not None and case["next_step_at"] is not None
            and case["next_step_at"] <= as_of)


def run_next_step(ctx: HandlerContext, case: dict) -> dict:
    """Run the case's next step (the caller holds the case locked and checked it is due)."""
    schedule = ctx.policy.schedule_named(case["schedule"])
    index = case["next_step"]
    step = schedule.step(index)
    if step is None:  # the policy lost steps since the case opened: nothing left to do
        return dunning.update_case(ctx, case, {"next_step": None, "next_step_at": None})
    following = schedule.step(index + 1)
    advance = {
        "next_step": index + 1 if following else None,
        "next_step_at": dunning.step_due_at(case["first_failed_at"], following.day) if following else None,
    }
    due_at = dunning.step_due_at(case["first_failed_at"], step.day)
    if step.action == "schedule_disruption":
        disrupt_at = accounts.schedule_disruption(ctx, case, due_at)
        case = dunning.apply(ctx, case, dunning.DISRUPTION_WARNING_DUE, step=index,
                             changes={**advance, "disrupt_at": disrupt_at})
    elif step.action == "disrupt":
        case = dunning.apply(ctx, case, dunning.DISRUPTION_DATE_PASSED, step=index, changes=advance)
        accounts.disrupt(ctx, case, due_at)
    else:
        case = dunning.update_case(ctx, case, advance)
    _send_step_email(ctx, case, index, step.email)
    log.info("case.step_ran", case_id=case["id"], step=index, day=step.day, email=step.email,
             action=step.action, due_at=due_at.isoformat())
    return case


def _send_step_email(ctx: HandlerContext, case: dict, index: int, template: str) -> None:
    from worker import outbox
    email_id = outbox.add_case_email(ctx, template, case["id"], f"case:{case['id']}:step:{index}")
    if email_id is None:
        log.warning("case.step_email_not_added", case_id=case["id"], step=index, template=template)
