"""Can the owner be reached? A case whose owner has no deliverable address is marked, held, announced.

Why: disrupting an owner who never got a single email is the one thing a dunning system must
never do silently. The owner of record's address comes from the policy only (Stripe customer
email, or the policy's metadata key; never an invoice's `customer_email` snapshot). A case is
`owner_unreachable` when that address is missing, refused by the policy's checks, or was rejected
permanently by the mail provider (a 4xx from SendGrid for that very address).

What follows (policy `unreachable`):
  "hold"    (default) the schedule_disruption and disrupt steps wait, re-checked daily, until the
            owner is reachable again (a customer.updated or a fresh read from Stripe gives a good
            address) or an operator releases the case (`dunning cases release CASE`, release_case);
  "proceed" the schedule runs on.
Either way the platform gets one signed `service.owner_unreachable` notice per case (it can show
the owner the messages in-app), and `dunning stats`, /metrics and `dunning cases list
--unreachable` count and list such cases.
"""

from __future__ import annotations

import functools
from datetime import timedelta

import structlog
from sqlalchemy import Table, bindparam, or_, select

from handlers import dunning
from handlers import dedupe_keys
from handlers.context import HandlerContext
from worker.pure.ids import new_id

log = structlog.get_logger("handlers.reachability")

UNREACHABLE_NOTICE = "service.owner_unreachable"
HOLD_RECHECK = timedelta(days=1)  # a held step looks again this often (the owner may have been fixed)


class ReleaseError(Exception):
    """Raised when a case cannot be released (unknown, ended, or not held): the message says which."""


def owner_address(ctx: HandlerContext, customer_id: str) -> str | None:
    """The owner of record's address per the policy, or None when there is no deliverable one."""
    return ctx.effects.recipient(ctx.policy, ctx.db.row_by(ctx.conn, ctx.table("customers"), id=customer_id))


def _rejected(ctx: HandlerContext, case: dict, address: str) -> bool:
    """True when the provider refused mail of this case to this very address (permanently, or for 3 days)."""
    return ctx.db.run(ctx.conn, _failed_email_to(ctx.table("emails")),
                      {"b_case": case["id"], "b_address": address}).first() is not None


@functools.lru_cache(maxsize=16)
def _failed_email_to(emails: Table):
    return (select(emails.c.id).where(emails.c.case_id == bindparam("b_case"), emails.c.recipient == bindparam("b_address"),
                                      emails.c.status == "failed").limit(1))


def refresh(ctx: HandlerContext, case: dict, *, reason_if_unreachable: str = "no deliverable owner address") -> dict:
    """Re-evaluate the owner's reachability for the (locked) case; mark or clear; return the case."""
    address = owner_address(ctx, case["customer_id"])
    reachable = address is not None and not _rejected(ctx, case, address)
    if reachable and case["owner_unreachable"]:
        log.info("case.owner_reachable_again", case_id=case["id"])
        return dunning.update_case(ctx, case, {"owner_unreachable": 0})
    if not reachable and not case["owner_unreachable"]:
        return mark_unreachable(ctx, case, reason_if_unreachable)
    return case


def owner_known(ctx: HandlerContext, customer_id: str) -> None:
    """A customer event gave us the owner of record: catch up their open cases.

    Stripe may deliver customer.created after the invoice.payment_failed that opened a case: the
    day-0 email was refused then (no address yet) and is sent now, once (same dedupe key). A case
    marked unreachable is cleared when the address now works.
    """
    if owner_address(ctx, customer_id) is None:
        return
    for (case_id,) in ctx.db.run(ctx.conn, dunning.open_cases_of_customer(ctx.table("cases")),
                                 {"b_customer": customer_id}).all():
        case = dunning.lock_case(ctx, case_id=case_id)
        if case["owner_unreachable"]:
            case = refresh(ctx, case)
        first = ctx.policy.schedule_named(case["schedule"]).step(0)
        if first is not None and case["next_step"] != 0:
            ctx.effects.step_email(ctx, case, 0, first.email, delay_seconds=ctx.settings.first_email_delay_seconds)


def mark_unreachable(ctx: HandlerContext, case: dict, reason: str) -> dict:
    """Mark the (locked) case unreachable and tell the platform, once per case."""
    from handlers.accounts import lock_account
    if not case["owner_unreachable"]:
        case = dunning.update_case(ctx, case, {"owner_unreachable": 1})
    account = lock_account(ctx, case)
    ctx.effects.notice(ctx, UNREACHABLE_NOTICE, account["id"], dedupe_keys.notice(account["id"], UNREACHABLE_NOTICE, case["id"]),
                       case_id=case["id"], invoice_id=case["invoice_id"], customer_id=case["customer_id"],
                       subscription_id=case["subscription_id"], disrupt_at=case.get("disrupt_at"))
    log.warning("case.owner_unreachable", case_id=case["id"], reason=reason, policy=ctx.policy.unreachable)
    return case


def holds(ctx: HandlerContext, case: dict) -> bool:
    """True when disruption must wait for this case: unreachable, policy hold, not released."""
    return bool(case["owner_unreachable"]) and ctx.policy.unreachable == "hold" and not case["hold_released"]


def mark_rejected_email(ctx: HandlerContext, email_id: str, error: str) -> None:
    """A dunning email of a case was refused permanently by the provider: its owner is unreachable."""
    emails = ctx.table("emails")
    case_id = ctx.conn.execute(select(emails.c.case_id).where(emails.c.id == email_id)).scalar()
    if not case_id:
        return
    case = dunning.lock_case(ctx, case_id=case_id)
    if not dunning.is_open(case):
        return
    mark_unreachable(ctx, case, f"the mail provider refused the address: {error[:200]}")


def release_case(ctx: HandlerContext, case_key: str, *, released_by: str, reason: str) -> dict:
    """An operator decides: disruption of this held case may proceed on schedule. Returns the case.

    `case_key` is a case id or an invoice id. Recorded in case_releases (who, why, when); the
    case keeps `owner_unreachable` (the owner still cannot be mailed), only the hold is lifted.
    """
    released_by, reason = (released_by or "").strip(), (reason or "").strip()
    if not released_by or not reason:
        raise ReleaseError("a release needs who released it and a reason")
    cases = ctx.table("cases")
    case_id = ctx.conn.execute(select(cases.c.id).where(
        or_(cases.c.id == case_key, cases.c.invoice_id == case_key))).scalar()
    case = dunning.lock_case(ctx, case_id=case_id) if case_id else None
    if case is None:
        raise ReleaseError(f"no case {case_key}")
    if not dunning.is_open(case):
        raise ReleaseError(f"case {case['id']} has ended ({case['state']})")
    if not case["owner_unreachable"]:
        raise ReleaseError(f"case {case['id']} is not held: its owner is reachable")
    if case["hold_released"]:
        return case
    ctx.conn.execute(ctx.table("case_releases").insert().values(
        id=new_id("rel"), case_id=case["id"], released_by=released_by[:200], reason=reason[:1000],
        released_at=ctx.now))
    changes = {"hold_released": 1}
    if case["next_step_at"] is not None and case["next_step_at"] > ctx.now:
        changes["next_step_at"] = ctx.now  # the held step runs on the next scheduler pass
    case = dunning.update_case(ctx, case, changes)
    log.info("case.hold_released", case_id=case["id"], released_by=released_by, reason=reason[:200])
    return case


def unreachable_count(conn, db) -> int:
    """Open cases whose owner is unreachable (for stats and metrics)."""
    from sqlalchemy import func
    cases = db.table("cases")
    return int(conn.execute(select(func.count()).select_from(cases).where(
        cases.c.owner_unreachable == 1, cases.c.state.in_(dunning.OPEN_STATES))).scalar() or 0)

