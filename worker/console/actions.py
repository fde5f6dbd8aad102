"""What support can do from a case page, each with a reason, recorded with who and when.

The actions are the existing operations with their own rules, never a second copy of them:
  payment-link   worker.stripe.payment_links.request_links (owner of record only, bank methods by
                 amount, daily limit per invoice); the reason becomes the request's note.
  replay-event   worker.intake.event_store.requeue_events, for a FAILED event of this case only.
  retry-email    worker.delivery.outbox_admin.retry, for an undelivered email or notice of this case only.
  retry-notice
  release-hold   worker.delivery.reachability.release_case: disruption of a case held because its owner
                 is unreachable may proceed on schedule (as `dunning cases release`).
Each successful action writes one `console_actions` row (actor, action, case, invoice, target,
reason, outcome); the case page lists them in its timeline.
"""

from __future__ import annotations

from sqlalchemy import select

from worker.pure.clock import utcnow
from worker.infra.db import about_case
from worker.pure.ids import new_id

MAX_REASON = 1000


class ActionRefused(Exception):
    """Raised when a console action is refused; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ActionRefused(400, "give a reason: it is recorded with the action")
    if len(reason) > MAX_REASON:
        raise ActionRefused(400, f"the reason is longer than {MAX_REASON} characters")
    return reason


def record(runtime, *, actor: str, action: str, invoice_id: str, case_id: str | None, target: str | None,
           reason: str, outcome: str) -> str:
    table = runtime.db.table("console_actions")
    action_id = new_id("ca")
    with runtime.db.transaction() as conn:
        conn.execute(table.insert().values(id=action_id, at=utcnow(), actor=actor[:200], action=action,
                                           case_id=case_id, invoice_id=invoice_id, target=target,
                                           reason=reason, outcome=outcome[:1000]))
    return action_id


def _case_id(runtime, invoice_id: str) -> str | None:
    cases = runtime.db.table("cases")
    with runtime.db.reading() as conn:
        return conn.execute(select(cases.c.id).where(cases.c.invoice_id == invoice_id)).scalar()


def send_payment_link(runtime, invoice_id: str, *, actor: str, reason: str) -> str:
    """Ask for a payment link for the invoice's owner of record, as POST /payment-links does."""
    from worker.stripe.payment_links import PaymentLinkRefused, request_links
    reason = check_reason(reason)
    try:
        # requested_by names the agent, never a recipient: an agent signed in as ann@corp reads "ann at corp"
        # (request_links refuses anything shaped like an address, the reason included).
        created = request_links(runtime, {"invoice": invoice_id, "requested_by": actor.replace("@", " at ")[:200],
                                          "note": reason})
    except PaymentLinkRefused as exc:
        raise ActionRefused(exc.status, exc.message) from None
    request_id = created[0]["id"]
    record(runtime, actor=actor, action="payment-link", invoice_id=invoice_id, case_id=_case_id(runtime, invoice_id),
           target=request_id, reason=reason, outcome=f"requested {request_id}")
    return request_id


def replay_event(runtime, invoice_id: str, event_id: str, *, actor: str, reason: str) -> None:
    """Process a failed event of this case again (handlers are idempotent)."""
    from worker.console.cases import case_story
    from worker.intake.event_store import requeue_events
    reason = check_reason(reason)
    story = case_story(runtime, invoice_id)
    event = next((e for e in (story or {}).get("events", []) if e["id"] == event_id), None)
    if event is None:
        raise ActionRefused(404, f"event {event_id} is not one of this case's events")
    if event["status"] != "failed":
        raise ActionRefused(409, f"event {event_id} is {event['status']}: only a failed event is replayed")
    requeue_events(runtime, [event_id])
    record(runtime, actor=actor, action="replay-event", invoice_id=invoice_id,
           case_id=story["case"]["id"] if story["case"] else None, target=event_id, reason=reason,
           outcome="requeued")


def release_hold(runtime, invoice_id: str, *, actor: str, reason: str) -> None:
    """Lift the hold of a case whose owner is unreachable, as `dunning cases release` does."""
    from handlers.reachability import ReleaseError
    from worker.delivery.reachability import release_case
    reason = check_reason(reason)
    try:
        case = release_case(runtime, invoice_id, released_by=f"console:{actor}", reason=reason)
    except ReleaseError as exc:
        raise ActionRefused(409, str(exc)) from None
    record(runtime, actor=actor, action="release-hold", invoice_id=invoice_id, case_id=case["id"],
           target=case["id"], reason=reason, outcome="hold released: disruption may proceed on schedule")


def retry_outbox(runtime, invoice_id: str, row_id: str, *, actor: str, reason: str) -> str:
    """Deliver an undelivered email or platform notice of this case again; returns 'email' or 'notice'."""
    from worker.delivery.outbox_admin import OutboxError, retry
    reason = check_reason(reason)
    db = runtime.db
    case_id = _case_id(runtime, invoice_id)
    emails, notices = db.table("emails"), db.table("platform_notices")
    with db.reading() as conn:
        found = None
        for kind, table in (("email", emails), ("notice", notices)):
            mine = about_case(table, invoice_id, case_id)
            row = conn.execute(select(table.c.status).where(table.c.id == row_id, mine)).first()
            if row is not None:
                found = (kind, row.status)
                break
    if found is None:
        raise ActionRefused(404, f"{row_id} is not an email or notice of this case")
    kind, status = found
    if status not in ("pending", "failed", "sending"):
        raise ActionRefused(409, f"{kind} {row_id} is {status}: only an undelivered one is retried")
    try:
        retry(runtime, row_id)
    except OutboxError as exc:
        raise ActionRefused(409, str(exc)) from None
    record(runtime, actor=actor, action=f"retry-{kind}", invoice_id=invoice_id, case_id=case_id, target=row_id,
           reason=reason, outcome=f"was {status}; due now")
    return kind
