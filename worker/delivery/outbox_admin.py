"""Support's hands on the outbox: list what is not yet delivered, push one email or notice again.

The outbox rows are the truth (worker/delivery/outbox.py writes them, the sender actors deliver them);
a retry resets the row to pending and due now, then enqueues its sender, exactly as the
scheduler's sweep would. Used by `dunning outbox list|retry` and the console's retry action.
"""

from __future__ import annotations

from sqlalchemy import select, update

from worker.observe.logs import mask_email
from worker.pure.clock import isoformat, utcnow

UNDELIVERED = {"email": ("pending", "sending"), "notice": ("pending", "sending")}
FAILED = ("failed",)


class OutboxError(Exception):
    """Raised when an outbox row cannot be retried (unknown id, or already delivered)."""


def list_outbox(db, *, pending: bool = True, failed: bool = True) -> list[dict]:
    """Undelivered emails and notices (pending, failed or both), oldest first."""
    emails, notices = db.table("emails"), db.table("platform_notices")
    email_states = (UNDELIVERED["email"] if pending else ()) + (FAILED if failed else ())
    notice_states = (UNDELIVERED["notice"] if pending else ()) + (FAILED if failed else ())
    with db.reading(snapshot=True) as conn:
        items = [{"kind": "email", **dict(r)} for r in conn.execute(
            select(emails.c.id, emails.c.template.label("name"), emails.c.recipient, emails.c.status,
                   emails.c.attempts, emails.c.last_error, emails.c.next_attempt_at, emails.c.created_at,
                   emails.c.case_id, emails.c.invoice_id, emails.c.customer_id)
            .where(emails.c.status.in_(email_states))).mappings()]
        items += [{"kind": "notice", **dict(r)} for r in conn.execute(
            select(notices.c.id, notices.c.type.label("name"), notices.c.account_id, notices.c.seq,
                   notices.c.status, notices.c.attempts, notices.c.last_error, notices.c.next_attempt_at,
                   notices.c.created_at, notices.c.case_id, notices.c.invoice_id, notices.c.customer_id)
            .where(notices.c.status.in_(notice_states))).mappings()]
    items.sort(key=lambda r: (r["created_at"], r["id"]))
    for item in items:
        if "recipient" in item:
            item["recipient"] = mask_email(item["recipient"])
        for key in ("next_attempt_at", "created_at"):
            item[key] = isoformat(item[key])
    return items


def retry(runtime, row_id: str) -> dict:
    """Make one email or notice due now (attempts reset), commit, then enqueue its sender."""
    db = runtime.db
    emails, notices = db.table("emails"), db.table("platform_notices")
    now = utcnow()
    with db.transaction() as conn:
        email = conn.execute(db.lock(select(emails.c.id, emails.c.status).where(emails.c.id == row_id))).first()
        notice = None
        if email is None:
            notice = conn.execute(db.lock(select(notices.c.id, notices.c.status, notices.c.account_id)
                                          .where(notices.c.id == row_id))).first()
        row = email or notice
        if row is None:
            raise OutboxError(f"no email or notice {row_id}")
        if row.status == "sent":
            raise OutboxError(f"{row_id} was already delivered")
        table = emails if email is not None else notices
        values = {"status": "pending", "attempts": 0, "next_attempt_at": now, "lease_until": None}
        conn.execute(update(table).where(table.c.id == row_id).values(**values))
    if email is not None:
        runtime.actors.send_email.send(row_id)
        return {"id": row_id, "kind": "email", "previous_status": email.status, "enqueued": "send_email"}
    runtime.actors.deliver_notices.send(notice.account_id)
    return {"id": row_id, "kind": "notice", "previous_status": notice.status, "account_id": notice.account_id,
            "enqueued": "deliver_notices"}
