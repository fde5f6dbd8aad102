"""The ids every log line of a case's life carries: invoice_id, customer_id and case_id.

An actor knows one id (an event, a case, an email, an account, a payment link request, a card
retry). Most name the case's three ids from the row they read anyway (worker.pure.message_log);
`case_ids` looks them up for the one that cannot (a payment link request has no case of its own),
so every line that actor logs carries them too. `grep invoice_id=in_123` then tells the whole story.

It never fails an actor: if the lookup cannot run (database down), the actor's own work fails
with the real error, and its lines still carry the id it was given.
"""

from __future__ import annotations

import structlog
from sqlalchemy import select

from handlers.stripe_objects import expandable_id

log = structlog.get_logger("worker.observe.log_context")


def ids_from_event_object(obj: dict) -> dict[str, str]:
    """invoice_id / customer_id / subscription_id named by a Stripe event's object."""
    kind = obj.get("object")
    found: dict[str, str | None] = {}
    if kind == "invoice":
        found["invoice_id"] = obj.get("id")
    elif kind == "customer":
        found["customer_id"] = obj.get("id")
    elif kind == "subscription":
        found["subscription_id"] = obj.get("id")
    else:
        found["invoice_id"] = expandable_id(obj.get("invoice"))
    found.setdefault("customer_id", expandable_id(obj.get("customer")))
    if kind != "subscription" and isinstance(obj.get("subscription"), (str, dict)):
        found["subscription_id"] = expandable_id(obj.get("subscription"))
    return {k: v for k, v in found.items() if isinstance(v, str) and v}


def case_ids(runtime, given: dict) -> dict[str, str]:
    """From the ids an actor was given, the case's invoice, customer and case ids (those known)."""
    try:
        return _lookup(runtime.db, given)
    except Exception as exc:  # noqa: BLE001 - logging context must never break the work itself
        log.debug("log_context.unavailable", error=str(exc)[:200])
        return {}


def _first(conn, stmt) -> dict:
    row = conn.execute(stmt).mappings().first()
    return {k: v for k, v in dict(row).items() if v} if row else {}


def _lookup(db, given: dict) -> dict[str, str]:
    t = db.tables
    found: dict[str, str] = {}
    with db.reading() as conn:
        if given.get("payment_link_request"):
            p = t["payment_links"]
            found.update(_first(conn, select(p.c.invoice_id, p.c.customer_id)
                                .where(p.c.id == given["payment_link_request"])))
        if found.get("invoice_id"):
            c = t["cases"]
            found.update(_first(conn, select(c.c.id.label("case_id"), c.c.customer_id)
                                .where(c.c.invoice_id == found["invoice_id"])))
    keep = ("invoice_id", "customer_id", "case_id")
    return {k: v for k, v in found.items() if k in keep and k not in given and isinstance(v, str)}
