"""Durable timers: each case's next due step is a column (cases.next_step, cases.next_step_at).

The scheduler finds due cases with an indexed range query (cost grows with the due cases, not
with all cases) and enqueues their ids; worker/scheduling/due_steps.py then runs every step due as of
the given instant, in order, one transaction per step (`run_next_step` here decides each). A step runs at most once: it is chosen by
the case's `next_step` index read under the case row lock, and the same transaction advances
the index with a guarded update (WHERE version = :seen); its email_steps key
(handlers.dedupe_keys.email_step, the text of its email's key handlers.dedupe_keys.step_email)
makes a second send impossible even if all that failed. Steps of several invoices of one customer
that fall due together share one email (worker/delivery/account_emails.py).

A case whose steps message is queued is not queued again before its lease lapses (due_steps.py)
(cases.steps_enqueued_at, cleared when the message runs): a backlog, or a second scheduler
host, does not fill the broker with copies; a lost message is queued again after the lease.

The owner is really warned (issue 12; policy min_warning_days, min_gap_hours, unreachable):
- late (a backfilled 20-day-old failure, a scheduler down for days): only the latest step that
  still makes sense runs (never a disrupt before its warning, never a disrupt without its final
  notice), the others are skipped, and the disruption date moves so that every date an email
  states is in the future when it is sent (the platform gets the moved date);
- never two dunning emails within min_gap_hours (the day-0 failure email aside);
- disrupt only min_warning_days after the disruption warning was DELIVERED and 24 h after the
  final notice was: an undelivered warning holds the disruption, a later delivery moves it;
- with STRIPE_API_KEY every step is verified at Stripe first (handlers/verification.py);
- an unreachable owner holds disruption (handlers/reachability.py).
Times are the scheduler's (`as_of`, what `dunning tick --at` sets), not the worker's clock.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Table, bindparam, select

from handlers import accounts, dunning, reachability
from handlers import dedupe_keys
from handlers.context import HandlerContext
from worker.pure.clock import isoformat

log = structlog.get_logger("handlers.steps")

UNVERIFIED_BACKOFF_BASE = timedelta(minutes=5)  # a step Stripe could not verify waits, doubling...
UNVERIFIED_BACKOFF_CAP = timedelta(hours=2)    # ...up to this
FINAL_NOTICE_MIN = timedelta(hours=24)      # the final notice is delivered at least this long before disruption
DELIVERY_WAIT = timedelta(hours=1)          # a disrupt whose warning is still undelivered looks again after this
DELIVERY_SLACK = timedelta(hours=1)         # a delivery this soon after queueing counts as immediate


def unverified_backoff(failures: int) -> timedelta:
    """When a step Stripe could not verify runs again: 5, 10, 20 min ... capped at 2 h (n-th failed try)."""
    return min(UNVERIFIED_BACKOFF_BASE * (2 ** max(0, failures - 1)), UNVERIFIED_BACKOFF_CAP)


def is_due(case: dict | None, as_of: datetime) -> bool:
    return (dunning.is_open(case) and case["next_step"] is not None and case["next_step_at"] is not None
            and case["next_step_at"] <= as_of)


def _index_of(schedule, action: str) -> int | None:
    return next((i for i, s in enumerate(schedule.steps) if s.action == action), None)


def planned_at(ctx: HandlerContext, case: dict, schedule, index: int) -> datetime:
    """When step `index` falls due: its day, after the (moved) disruption date allows, after the gap."""
    step = schedule.step(index)
    at = dunning.step_due_at(case["first_failed_at"], step.day)
    warn, disrupt = _index_of(schedule, "schedule_disruption"), _index_of(schedule, "disrupt")
    if case["disrupt_at"] is not None and warn is not None and disrupt is not None and index > warn \
            and case["state"] == dunning.DISRUPTION_SCHEDULED:
        offset = timedelta(days=schedule.steps[disrupt].day - step.day)
        at = max(at, case["disrupt_at"] - offset)
    if index > 0 and case["last_email_at"] is not None:
        at = max(at, case["last_email_at"] + _gap(ctx))
    return at


def _gap(ctx: HandlerContext) -> timedelta:
    return timedelta(hours=ctx.policy.min_gap_hours)


def _choose(ctx: HandlerContext, case: dict, schedule) -> int:
    """The step to run now: the latest one due that still makes sense (a late case catches up once)."""
    index = case["next_step"]
    last = index
    while schedule.step(last + 1) is not None and planned_at(ctx, case, schedule, last + 1) <= ctx.clock:
        last += 1
    chosen = last
    warn, disrupt = _index_of(schedule, "schedule_disruption"), _index_of(schedule, "disrupt")
    if case["state"] == dunning.FAILING and warn is not None and index <= warn < chosen:
        chosen = warn  # never disrupt (or send the final notice) before the disruption warning
    if chosen == disrupt and chosen > index and schedule.steps[chosen - 1].action is None:
        chosen -= 1    # never disrupt without the final notice: send it, the date moves
    return chosen


def run_next_step(ctx: HandlerContext, case: dict, *, facts=None, catch_up: bool = True) -> dict:
    """Run (or postpone) the case's next step; the caller holds the case locked and checked it is due."""
    schedule = ctx.policy.schedule_named(case["schedule"])
    index = case["next_step"]
    if schedule.step(index) is None:  # the policy lost steps since the case opened: nothing left to do
        return dunning.update_case(ctx, case, {"next_step": None, "next_step_at": None})
    chosen = _choose(ctx, case, schedule) if catch_up else index
    step = schedule.step(chosen)
    clock = ctx.clock
    if chosen > index:
        log.info("case.steps_skipped", case_id=case["id"], skipped=list(range(index, chosen)), running=chosen,
                 as_of=isoformat(clock))
    if chosen > 0 and case["last_email_at"] is not None and clock < case["last_email_at"] + _gap(ctx):
        return _postpone(ctx, case, case["last_email_at"] + _gap(ctx), "min_gap_hours")
    if catch_up:  # not at opening: the customer.created may simply follow its invoice (handlers/customers.py)
        case = reachability.refresh(ctx, case)
    if step.action is not None:
        if reachability.holds(ctx, case):
            return _postpone(ctx, case, clock + reachability.HOLD_RECHECK, "owner_unreachable_hold")
        if facts is not None and facts.unavailable and step.action == "disrupt":
            failures = case["verify_failures"] + 1
            case = dunning.update_case(ctx, case, {"verify_failures": failures})
            return _postpone(ctx, case, clock + unverified_backoff(failures), "stripe_unverified")
    due_at = dunning.step_due_at(case["first_failed_at"], step.day)
    stamp: dict = {"last_email_at": clock} if chosen > 0 else {}
    warn, disrupt = _index_of(schedule, "schedule_disruption"), _index_of(schedule, "disrupt")
    if step.action == "schedule_disruption":
        not_before = clock + timedelta(days=ctx.policy.min_warning_days)
        disrupt_at = accounts.schedule_disruption(ctx, case, due_at, not_before=not_before)  # the account's date
        case = dunning.apply(ctx, case, dunning.DISRUPTION_WARNING_DUE, step=chosen,
                             changes={"disrupt_at": disrupt_at, "warned_at": clock, **stamp})
    elif step.action == "disrupt":
        not_before = _disrupt_not_before(ctx, case, schedule, warn, chosen)
        if not_before is None:
            return _postpone(ctx, case, clock + DELIVERY_WAIT, "warning_not_delivered_yet")
        if not_before > clock:
            case = move_disruption(ctx, case, not_before)
            return _postpone(ctx, case, not_before, "warning_period")
        case = dunning.apply(ctx, case, dunning.DISRUPTION_DATE_PASSED, step=chosen, changes=stamp)
        accounts.disrupt(ctx, case, due_at)
    else:
        changes = dict(stamp)
        if warn is not None and chosen > warn and case["state"] == dunning.DISRUPTION_SCHEDULED \
                and case["disrupt_at"] is not None:
            if disrupt is not None and chosen == disrupt - 1:
                changes["final_notice_at"] = clock
            spacing = max(FINAL_NOTICE_MIN, timedelta(days=schedule.steps[disrupt].day - step.day)) \
                if disrupt is not None else FINAL_NOTICE_MIN
            if case["disrupt_at"] < clock + FINAL_NOTICE_MIN:  # the date it states must still lie ahead
                case = move_disruption(ctx, case, clock + spacing)
        if changes:
            case = dunning.update_case(ctx, case, changes)
    following = chosen + 1 if schedule.step(chosen + 1) else None
    case = dunning.update_case(ctx, case, {
        "next_step": following,
        "next_step_at": planned_at(ctx, case, schedule, following) if following is not None else None,
    })
    _send_step_email(ctx, case, chosen, step.email)
    _ran(ctx, case, chosen, step)
    return case


def plan_opening(ctx: HandlerContext, values: dict) -> int | None:
    """Day 0 run with the case's INSERT: when the first step is a plain email (no action: the usual
    payment-failed email), the case is inserted with its next step already planned, instead of
    inserted then updated at once (issue 17: one statement fewer per failure). `values` (a new
    case's) gets next_step and next_step_at; returns the step run (0), for `ran_at_opening` to send
    its email once the row exists; None when the first step must go through `run_next_step`.
    The same as `run_next_step(catch_up=False)` on the new case: no gap, hold or disruption applies
    to a plain day-0 email."""
    schedule = ctx.policy.schedule_named(values["schedule"])
    step = schedule.step(0)
    if step is None or step.action is not None:
        return None
    following = 1 if schedule.step(1) else None
    new_case = {**values, "state": dunning.FAILING, "disrupt_at": None, "last_email_at": None}
    values.update(next_step=following,
                  next_step_at=planned_at(ctx, new_case, schedule, following) if following is not None else None)
    return 0


def ran_at_opening(ctx: HandlerContext, case: dict, index: int) -> None:
    """The email of the step `plan_opening` ran, now that the case row exists."""
    step = ctx.policy.schedule_named(case["schedule"]).step(index)
    _send_step_email(ctx, case, index, step.email)
    _ran(ctx, case, index, step)


def _ran(ctx: HandlerContext, case: dict, index: int, step) -> None:
    due_at = dunning.step_due_at(case["first_failed_at"], step.day)
    log.info("case.step_ran", case_id=case["id"], step=index, day=step.day, email=step.email,
             action=step.action, due_at=due_at.isoformat(), as_of=isoformat(ctx.clock))


def _postpone(ctx: HandlerContext, case: dict, until: datetime, reason: str) -> dict:
    log.info("case.step_postponed", case_id=case["id"], step=case["next_step"], until=isoformat(until), reason=reason)
    return dunning.update_case(ctx, case, {"next_step_at": until})


def _disrupt_not_before(ctx: HandlerContext, case: dict, schedule, warn: int | None, disrupt: int) -> datetime | None:
    """The earliest instant the disruption may happen given what was delivered; None while undelivered."""
    bounds = [accounts.case_date(ctx, case)]
    checks = []
    if warn is not None:
        checks.append((warn, case["warned_at"], timedelta(days=ctx.policy.min_warning_days)))
    if disrupt - 1 > (warn if warn is not None else -1) and schedule.steps[disrupt - 1].action is None:
        checks.append((disrupt - 1, case["final_notice_at"], FINAL_NOTICE_MIN))
    for index, step_at, wait in checks:
        email = _step_email(ctx, case, index)
        if email is None:
            continue  # refused (owner unreachable, released or "proceed") or written before this rule
        if email["status"] in ("pending", "sending"):
            return None
        if email["status"] != "sent":
            continue  # failed for good: reachability marked the owner; cancelled: nothing to wait for
        delay = email["sent_at"] - email["created_at"] if email["sent_at"] else timedelta(0)
        basis = (step_at or email["created_at"]) + (delay if delay > DELIVERY_SLACK else timedelta(0))
        bounds.append(basis + wait)
    return max(bounds)


def _step_email(ctx: HandlerContext, case: dict, index: int) -> dict | None:
    return step_email(ctx, case["id"], index)


def step_email(ctx, case_id: str, index: int) -> dict | None:
    """The email row that satisfied the case's step, whichever invoice's email it was."""
    key = dedupe_keys.email_step(case_id, index)
    email_id = ctx.db.run(ctx.conn, _step_email_id(ctx.table("email_steps")), {"b_key": key}).scalar()
    emails = ctx.table("emails")
    return ctx.db.row_by(ctx.conn, emails, id=email_id) if email_id else ctx.db.row_by(ctx.conn, emails, dedupe_key=key)


@functools.lru_cache(maxsize=16)
def _step_email_id(steps: Table):
    return select(steps.c.email_id).where(steps.c.dedupe_key == bindparam("b_key"))


def move_disruption(ctx: HandlerContext, case: dict, new_date: datetime) -> dict:
    """Move the case's disruption date later; the platform is told the account's new date."""
    case = dunning.update_case(ctx, case, {"disrupt_at": new_date})
    accounts.move_disruption(ctx, case)
    log.info("case.disruption_moved", case_id=case["id"], disrupt_at=isoformat(new_date))
    return case


def _send_step_email(ctx: HandlerContext, case: dict, index: int, template: str) -> None:
    """The step's email; day 0 waits FIRST_EMAIL_DELAY_SECONDS so an invoice.paid arriving right behind
    the older failure (issue 12) cancels it before delivery (worker/delivery/email_delivery.py)."""
    delay = ctx.settings.first_email_delay_seconds if index == 0 else 0
    email_id = ctx.effects.step_email(ctx, case, index, template, delay_seconds=delay)
    if email_id is None:
        log.warning("case.step_email_not_added", case_id=case["id"], step=index, template=template)
