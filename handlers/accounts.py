"""The disruption timeline of an account (a subscription, else a customer), and the platform notices.

Several failing invoices of one subscription share one timeline: the account row holds its
status (active | disruption_scheduled | disrupted) and the date. Decisions, taken with the
account row locked (after the case row: the lock order is always case -> account):

- a case entering disruption_scheduled schedules the account (the earliest date of its open
  cases wins) and the platform is told `service.disruption_scheduled` with that date;
- the first case whose date passes unpaid disrupts the account: `service.disrupted`, once;
- a case that ends before the date: when no other case of the account is scheduled the
  disruption is cancelled (`service.disruption_cancelled`), else the date follows the remaining
  cases (a new `service.disruption_scheduled` if it moved);
- a disrupted account is restored (`service.restored`) when a case ends paid or voided and no
  unpaid case of the account remains. A write-off (uncollectible) or a deleted subscription does
  not restore service: the debt is not paid.
Notices go through the outbox (worker.delivery.outbox.add_notice) in the same transaction.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select

from handlers import dunning
from handlers import dedupe_keys
from handlers.context import HandlerContext
from worker.pure.clock import isoformat

log = structlog.get_logger("handlers.accounts")

ACTIVE = "active"
DISRUPTION_SCHEDULED = "disruption_scheduled"
DISRUPTED = "disrupted"

SCHEDULED = "service.disruption_scheduled"
DISRUPTED_NOTICE = "service.disrupted"
RESTORED = "service.restored"
CANCELLED = "service.disruption_cancelled"


def account_id_for(subscription_id: str | None, customer_id: str) -> str:
    """The timeline key: the subscription, else the customer (one-off invoices)."""
    return subscription_id or customer_id


def ensure_account(ctx: HandlerContext, account_id: str, customer_id: str, subscription_id: str | None) -> None:
    """Make sure the account has a status row (active) so the platform can poll it."""
    ctx.db.insert_new(ctx.conn, ctx.table("accounts"), _new_account(ctx, account_id, customer_id, subscription_id),
                      "id")


def _new_account(ctx: HandlerContext, account_id: str, customer_id: str, subscription_id: str | None) -> dict:
    return {"id": account_id, "customer_id": customer_id, "subscription_id": subscription_id,
            "status": ACTIVE, "notice_seq": 0, "updated_at": ctx.now}


def lock_account(ctx: HandlerContext, case: dict) -> dict:
    """The account row locked for this transaction (made if unknown); once locked, the kept copy."""
    from handlers.facts import remember, remembered
    held = remembered(ctx, "accounts", case["account_id"])
    if held is not None:
        return held
    row = ctx.db.insert_or_lock(ctx.conn, ctx.table("accounts"), _new_account(
        ctx, case["account_id"], case["customer_id"], case["subscription_id"]), "id", "updated_at")
    return remember(ctx, "accounts", row)


def _set(ctx: HandlerContext, account: dict, **values) -> None:
    ctx.db.update_by(ctx.conn, ctx.table("accounts"), {**values, "updated_at": ctx.now}, id=account["id"])
    kept = ctx.rows.get(("accounts", account["id"]))
    if kept is not None:  # the copy lock_account keeps follows what this transaction wrote
        kept.update(values, updated_at=ctx.now)
    log.info("account.status", account_id=account["id"], from_status=account["status"],
             to_status=values.get("status", account["status"]),
             disrupt_at=isoformat(values.get("disrupt_at", account["disrupt_at"])))


def _notice(ctx: HandlerContext, kind: str, account: dict, case: dict, discriminator: str,
            disrupt_at: datetime | None) -> str | None:
    return ctx.effects.notice(
        ctx, kind, account["id"], dedupe_keys.notice(account["id"], kind, discriminator),
        case_id=case["id"], invoice_id=case["invoice_id"], customer_id=case["customer_id"],
        subscription_id=case["subscription_id"], disrupt_at=disrupt_at)


def nominal_disrupt_at(ctx: HandlerContext, case: dict) -> datetime:
    """The case's own disruption date: first failure + the schedule's disrupt_after_days."""
    schedule = ctx.policy.schedule_named(case["schedule"])
    return dunning.step_due_at(case["first_failed_at"], schedule.disrupt_after_days)


def case_date(ctx: HandlerContext, case: dict) -> datetime:
    """The case's own disruption date: its nominal date, or later when it was moved (issue 12)."""
    nominal = nominal_disrupt_at(ctx, case)
    return max(nominal, case["disrupt_at"]) if case.get("disrupt_at") else nominal


def _warning_due_at(ctx: HandlerContext, case: dict) -> datetime | None:
    schedule = ctx.policy.schedule_named(case["schedule"])
    day = next((s.day for s in schedule.steps if s.action == "schedule_disruption"), None)
    return None if day is None else dunning.step_due_at(case["first_failed_at"], day)


def schedule_disruption(ctx: HandlerContext, case: dict, due_at: datetime,
                        not_before: datetime | None = None) -> datetime:
    """A case's schedule_disruption step (due at `due_at`) runs: return the date to fix on it.

    The earliest date of the account wins. Other failing cases of the account whose own warning
    was due no later than this one (a scheduler catching up runs them in any order) count too,
    so the platform is told the earliest date first, once. No date is earlier than `not_before`
    (the warning sent now must give the owner min_warning_days).
    """
    account = lock_account(ctx, case)
    floor = not_before or datetime.min
    own = max(nominal_disrupt_at(ctx, case), floor)
    for other in dunning.open_cases_of_account(ctx, account["id"], exclude=case["id"]):
        warning = _warning_due_at(ctx, other)
        if other["state"] == dunning.FAILING and warning is not None and warning <= due_at:
            own = min(own, max(nominal_disrupt_at(ctx, other), floor))
    if account["status"] == ACTIVE:
        _set(ctx, account, status=DISRUPTION_SCHEDULED, disrupt_at=own, disrupted_at=None)
        _notice(ctx, SCHEDULED, account, case, f"{isoformat(own)}:{case['id']}", own)
        return own
    current = account["disrupt_at"]
    if account["status"] == DISRUPTION_SCHEDULED and (current is None or own < current):
        _set(ctx, account, disrupt_at=own)
        _notice(ctx, SCHEDULED, account, case, f"{isoformat(own)}:{case['id']}", own)
        return own
    return min(own, current) if current else own


def move_disruption(ctx: HandlerContext, case: dict) -> None:
    """The case's date moved later (a late warning, an undelivered one): follow it on the account.

    The account's date is the earliest of its scheduled cases; when it changes the platform gets
    `service.disruption_scheduled` again with the new date (a new notice id per date).
    """
    account = lock_account(ctx, case)
    if account["status"] != DISRUPTION_SCHEDULED:
        return
    scheduled = [c for c in dunning.open_cases_of_account(ctx, account["id"])
                 if c["state"] == dunning.DISRUPTION_SCHEDULED and c["disrupt_at"] is not None]
    if not scheduled:
        return
    date = min(case_date(ctx, c) for c in scheduled)
    if date != account["disrupt_at"]:
        _set(ctx, account, disrupt_at=date)
        _notice(ctx, SCHEDULED, account, case, f"{isoformat(date)}:{case['id']}", date)


def disrupt(ctx: HandlerContext, case: dict, at: datetime) -> bool:
    """The case's disruption date passed unpaid: disrupt the account once. True if this disrupted it."""
    account = lock_account(ctx, case)
    if account["status"] == DISRUPTED:
        return False
    date = account["disrupt_at"] or at
    _set(ctx, account, status=DISRUPTED, disrupt_at=date, disrupted_at=min(at, date))
    _notice(ctx, DISRUPTED_NOTICE, account, case, isoformat(date), date)
    return True


RESTORING_TRIGGERS = (dunning.INVOICE_PAID, dunning.INVOICE_VOIDED)


def case_closed(ctx: HandlerContext, case: dict, trigger: str) -> bool:
    """A case of the account ended by `trigger` (already written): move the timeline.

    True if this restored service (paid or voided, and no unpaid case of the account left).
    """
    account = lock_account(ctx, case)
    if account["status"] == ACTIVE:  # nothing scheduled, nothing to restore: the other cases do not matter
        return False
    remaining = dunning.open_cases_of_account(ctx, account["id"], exclude=case["id"])
    if account["status"] == DISRUPTION_SCHEDULED:
        scheduled = [c for c in remaining if c["state"] in (dunning.DISRUPTION_SCHEDULED, dunning.DISRUPTED)]
        if not scheduled:
            cancelled = account["disrupt_at"]
            _set(ctx, account, status=ACTIVE, disrupt_at=None, disrupted_at=None)
            _notice(ctx, CANCELLED, account, case, f"{isoformat(cancelled)}:{case['id']}", cancelled)
            return False
        date = min(case_date(ctx, c) for c in scheduled)
        if date != account["disrupt_at"]:
            _set(ctx, account, disrupt_at=date)
            _notice(ctx, SCHEDULED, account, scheduled[0], f"{isoformat(date)}:{case['id']}", date)
        return False
    if account["status"] == DISRUPTED:
        if trigger not in RESTORING_TRIGGERS or remaining:
            log.info("account.stays_disrupted", account_id=account["id"], trigger=trigger,
                     unpaid_cases=len(remaining))
            return False
        _set(ctx, account, status=ACTIVE, disrupt_at=None, disrupted_at=None)
        _notice(ctx, RESTORED, account, case, isoformat(account["disrupted_at"]) or case["id"], None)
        return True
    return False


def status_of_customer(conn, db, customer_id: str) -> dict:
    """What `dunning accounts show` prints: the customer's overall status and each account's."""
    accounts = db.table("accounts")
    rows = [dict(r) for r in conn.execute(
        select(accounts).where(accounts.c.customer_id == customer_id).order_by(accounts.c.id)).mappings()]
    rank = {ACTIVE: 0, DISRUPTION_SCHEDULED: 1, DISRUPTED: 2}
    # the most severe status; between equals, the earliest date
    ordered = sorted(rows, key=lambda r: (-rank.get(r["status"], 0), r["disrupt_at"] or datetime.max))
    worst = ordered[0] if ordered else None
    status = worst["status"] if worst else ACTIVE
    return {
        "customer": customer_id,
        "status": status,
        "disrupt_at": isoformat(worst["disrupt_at"]) if worst and status != ACTIVE else None,
        "disrupted_at": isoformat(worst["disrupted_at"]) if worst and status == DISRUPTED else None,
        "accounts": [{"account": r["id"], "subscription": r["subscription_id"], "status": r["status"],
                      "disrupt_at": isoformat(r["disrupt_at"]), "disrupted_at": isoformat(r["disrupted_at"])}
                     for r in rows],
    }
