"""Push failed platform notices again, in order: no notice is lost for good.

A notice that the platform did not acknowledge for the whole retry window (worker.delivery.notices) is
marked failed and the account's next notice goes on. Once the platform is back (or its secret
fixed), `dunning notices redeliver --failed | --account ID` makes the failed notices pending
again (attempts reset, due now) and enqueues their accounts; delivery then sends them in `seq`
order, ahead of any later notice still pending, exactly as the first time.

A failed notice that a LATER notice of the same account has since been delivered over is
superseded, not redelivered: the body carries no seq, so replaying an old `service.disrupted`
after the `service.restored` the platform already applied would cut off an owner who paid.
Those are reported (and stay failed); the platform's pull API shows their bodies.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select, update

from worker.pure.clock import utcnow

log = structlog.get_logger("worker.delivery.notice_redelivery")


def redeliver_failed(runtime, account_id: str | None = None) -> dict:
    """Requeue the failed notices (of one account, or all) not superseded; enqueue their accounts.

    Returns {"redelivered": [{id, account_id, seq, type}], "superseded": [...], "accounts": [...]}.
    """
    db = runtime.db
    notices = db.table("platform_notices")
    now = utcnow()
    redelivered, superseded = [], []
    with db.transaction() as conn:
        stmt = select(notices.c.id, notices.c.account_id, notices.c.seq, notices.c.type) \
            .where(notices.c.status == "failed").order_by(notices.c.account_id, notices.c.seq)
        if account_id is not None:
            stmt = stmt.where(notices.c.account_id == account_id)
        failed = [dict(r) for r in conn.execute(db.lock(stmt)).mappings()]
        last_sent = dict(conn.execute(
            select(notices.c.account_id, func.max(notices.c.seq)).where(
                notices.c.status == "sent",
                notices.c.account_id.in_({f["account_id"] for f in failed} or {""}))
            .group_by(notices.c.account_id)).all())
        for row in failed:
            if row["seq"] < (last_sent.get(row["account_id"]) or 0):
                superseded.append(row)
                continue
            conn.execute(update(notices).where(notices.c.id == row["id"], notices.c.status == "failed")
                         .values(status="pending", attempts=0, next_attempt_at=now, lease_until=None))
            redelivered.append(row)
    accounts = sorted({r["account_id"] for r in redelivered})
    for account in accounts:
        runtime.actors.deliver_notices.send(account)
    log.info("notices.redelivery", redelivered=len(redelivered), superseded=len(superseded),
             accounts=len(accounts))
    return {"redelivered": redelivered, "superseded": superseded, "accounts": accounts}
