"""The console's reads about cases: find one, list them a page at a time, tell one case's whole story.

Every query here is answered from an index, so the pages stay fast at a million cases:
  - search: an exact id (in_, cus_, sub_, dc_), an invoice number, or an owner's full email
    address (lower-cased, never a partial match: support must know the address to find it);
  - list: keyset paging on (sort key, id) with one index per sort order (schema.sql), never OFFSET;
  - one case: its rows by invoice, case and customer ids, and its Stripe events by
    `events.object_id` (data.object.id, stored with the event) plus those its transitions and
    card rows name. Owner addresses leave this module masked.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, true, tuple_

from handlers import dunning
from worker.pure.clock import from_unix, utcnow
from worker.infra.db import about_case
from worker.observe.logs import mask_email

PAGE_SIZE = 50
STATES = dunning.STATES
SORTS = {  # name -> (column, descending, label)
    "opened": ("opened_at", True, "newest first"),
    "amount": ("amount_due", True, "largest amount first"),
    "disrupt": ("disrupt_at", False, "soonest disruption first"),
}
MAX_QUERY = 320
ID_RE = re.compile(r"^(in|cus|sub|dc)_[A-Za-z0-9_]{1,250}$")


@dataclass(frozen=True)
class CaseFilter:
    q: str = ""
    state: str = ""
    within_days: int | None = None   # disruption within N days
    unreachable: bool = False        # owner_unreachable = 1 only
    sort: str = "opened"
    after: str = ""                  # the keyset cursor of the previous page's last row


# -- the list ----------------------------------------------------------------------------------
def next_step(policy, case: dict) -> dict | None:
    """The step the durable timer points at, described from the policy (None when none is left)."""
    if case["next_step"] is None:
        return None
    described = {"index": case["next_step"], "due_at": case["next_step_at"]}
    try:
        schedule = policy.schedule_named(case["schedule"])
        step = schedule.step(case["next_step"])
    except Exception:  # a schedule renamed in the policy since the case opened
        step = None
    if step is not None:
        described.update(day=step.day, email=step.email, action=step.action)
    return described


def _encode_cursor(value, row_id: str) -> str:
    raw = json.dumps([value.isoformat() if isinstance(value, datetime) else value, row_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str):
    """(value, id) from a cursor, or None for a cursor that is not one of ours."""
    try:
        value, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(row_id, str):
            return None
        if sort == "amount":
            return (int(value), row_id)
        return (datetime.fromisoformat(value), row_id)
    except (ValueError, TypeError, json.JSONDecodeError):
        return None


def _search_clause(db, conn, q: str):
    """The WHERE clause for a search text, or None when nothing can match."""
    cases = db.table("cases")
    if ID_RE.match(q):
        prefix = q.split("_", 1)[0]
        column = {"in": cases.c.invoice_id, "cus": cases.c.customer_id,
                  "sub": cases.c.subscription_id, "dc": cases.c.id}[prefix]
        return column == q
    if "@" in q:
        customers = db.table("customers")
        ids = list(conn.execute(select(customers.c.id).where(
            customers.c.email.in_(sorted({q, q.lower()}))).limit(100)).scalars())
        return cases.c.customer_id.in_(ids) if ids else None
    invoices = db.table("invoices")
    ids = list(conn.execute(select(invoices.c.id).where(invoices.c.number == q).limit(100)).scalars())
    return cases.c.invoice_id.in_(ids) if ids else None


def list_cases(runtime, flt: CaseFilter, *, now: datetime | None = None, page_size: int = PAGE_SIZE) -> dict:
    """One page of cases: {"rows": [...], "next": cursor or None, "sort": label}."""
    db = runtime.db
    now = now or utcnow()
    cases, customers = db.table("cases"), db.table("customers")
    sort = flt.sort if flt.sort in SORTS else "opened"
    column_name, descending, label = SORTS[sort]
    key = cases.c[column_name]
    with db.reading(snapshot=True) as conn:
        where = []
        q = flt.q.strip()[:MAX_QUERY]
        if q:
            clause = _search_clause(db, conn, q)
            if clause is None:
                return {"rows": [], "next": None, "sort": label}
            where.append(clause)
        if flt.state in STATES:
            where.append(cases.c.state == flt.state)
        if flt.unreachable:
            where.append(cases.c.owner_unreachable == 1)
        if flt.within_days is not None:
            where.append(cases.c.disrupt_at >= now)
            where.append(cases.c.disrupt_at <= now + timedelta(days=flt.within_days))
        if sort == "disrupt":
            where.append(cases.c.disrupt_at.is_not(None))
        cursor = _decode_cursor(flt.after, sort) if flt.after else None
        if cursor is not None:
            position = tuple_(key, cases.c.id)
            where.append(position < tuple_(*cursor) if descending else position > tuple_(*cursor))
        order = (key.desc(), cases.c.id.desc()) if descending else (key.asc(), cases.c.id.asc())
        stmt = (select(cases.c.id, cases.c.invoice_id, cases.c.customer_id, cases.c.state, cases.c.currency,
                       cases.c.amount_due, cases.c.opened_at, cases.c.disrupt_at, cases.c.next_step_at,
                       cases.c.owner_unreachable, customers.c.name, customers.c.email)
                .select_from(cases.outerjoin(customers, customers.c.id == cases.c.customer_id))
                .where(and_(true(), *where)).order_by(*order).limit(page_size + 1))
        found = [dict(r) for r in conn.execute(stmt).mappings()]
    more = len(found) > page_size
    found = found[:page_size]
    for row in found:
        row["email"] = mask_email(row["email"])
    last = found[-1] if more else None
    return {"rows": found, "sort": label,
            "next": _encode_cursor(last[column_name], last["id"]) if last else None}


# -- one case ----------------------------------------------------------------------------------
def _events_about(db, invoice_id: str, extra_ids: list[str]):
    events = db.table("events")
    if "object_id" in events.c:
        about = events.c.object_id == invoice_id
    else:  # a database made before the column: the CLI's way (a scan)
        about = events.c.payload.contains(f'"{invoice_id}"', autoescape=True)
    return or_(about, events.c.id.in_(extra_ids)) if extra_ids else about


def case_story(runtime, invoice_id: str) -> dict | None:
    """Everything about the case of an invoice, with one timeline in time order; None if unknown."""
    db = runtime.db
    t = db.tables
    cases, invoices = t["cases"], t["invoices"]
    with db.reading(snapshot=True) as conn:
        case = conn.execute(select(cases).where(cases.c.invoice_id == invoice_id)).mappings().first()
        invoice = conn.execute(select(invoices).where(invoices.c.id == invoice_id)).mappings().first()
        if case is None and invoice is None:
            return None
        case = dict(case) if case else None
        case_id = case["id"] if case else None
        customer_id = (case or invoice)["customer_id"]
        customer = conn.execute(select(t["customers"]).where(t["customers"].c.id == customer_id)).mappings().first()
        account = None
        if case:
            account = conn.execute(select(t["accounts"]).where(t["accounts"].c.id == case["account_id"])
                                   ).mappings().first()

        tr = t["case_transitions"]
        transitions = [dict(r) for r in conn.execute(
            select(tr).where(tr.c.case_id == case_id).order_by(tr.c.at, tr.c.id)).mappings()] if case_id else []
        cards_t = t["cards"]
        since = case["opened_at"] - timedelta(days=30) if case else None
        card_stmt = select(cards_t).where(cards_t.c.customer_id == customer_id)
        if since is not None:
            card_stmt = card_stmt.where(cards_t.c.recorded_at >= since)
        cards = [dict(r) for r in conn.execute(card_stmt.order_by(cards_t.c.recorded_at, cards_t.c.id)
                                               .limit(200)).mappings()]
        named = sorted({x["event_id"] for x in transitions if x["event_id"]} | {c["event_id"] for c in cards})
        ev = t["events"]
        events = [dict(r) for r in conn.execute(
            select(ev.c.id, ev.c.type, ev.c.created, ev.c.status, ev.c.source, ev.c.received_at,
                   ev.c.processed_at, ev.c.last_error, ev.c.attempts)
            .where(_events_about(db, invoice_id, named)).order_by(ev.c.created, ev.c.id).limit(500)).mappings()]

        em = t["emails"]
        about = about_case(em, invoice_id, case_id)
        emails = [dict(r) for r in conn.execute(
            select(em.c.id, em.c.template, em.c.recipient, em.c.subject, em.c.status, em.c.attempts,
                   em.c.last_error, em.c.created_at, em.c.sent_at, em.c.body_html)
            .where(about).order_by(em.c.created_at, em.c.id).limit(200)).mappings()]
        nt = t["platform_notices"]
        about = about_case(nt, invoice_id, case_id)
        notices = [dict(r) for r in conn.execute(
            select(nt.c.id, nt.c.type, nt.c.status, nt.c.attempts, nt.c.last_error, nt.c.created_at,
                   nt.c.delivered_at, nt.c.seq).where(about).order_by(nt.c.created_at, nt.c.seq).limit(200)
        ).mappings()]
        pl = t["payment_links"]
        links = [dict(r) for r in conn.execute(
            select(pl.c.id, pl.c.status, pl.c.amount, pl.c.currency, pl.c.methods, pl.c.requested_by,
                   pl.c.note, pl.c.requested_at, pl.c.created_at, pl.c.expires_at, pl.c.last_error)
            .where(pl.c.invoice_id == invoice_id).order_by(pl.c.requested_at)).mappings()]
        cr = t["card_retries"]
        retries = [dict(r) for r in conn.execute(
            select(cr.c.id, cr.c.payment_method_id, cr.c.status, cr.c.decline_code, cr.c.last_error,
                   cr.c.created_at, cr.c.finished_at).where(cr.c.invoice_id == invoice_id)
            .order_by(cr.c.created_at)).mappings()]
        ca = t["console_actions"]
        actions = [dict(r) for r in conn.execute(
            select(ca).where(ca.c.invoice_id == invoice_id).order_by(ca.c.at, ca.c.id)).mappings()]

    for email in emails:
        email["recipient"] = mask_email(email["recipient"])
    for event in events:
        event["created_at"] = from_unix(event["created"])
    timeline = _timeline(events, transitions, emails, notices, cards, retries, links, actions)
    return {
        "invoice_id": invoice_id, "case": case, "invoice": dict(invoice) if invoice else None,
        "customer": ({"id": customer["id"], "name": customer["name"], "email": mask_email(customer["email"])}
                     if customer else {"id": customer_id, "name": None, "email": None}),
        "account": dict(account) if account else None,
        "next_step": next_step(runtime.policy, case) if case else None,
        "events": events, "transitions": transitions, "emails": emails, "notices": notices, "cards": cards,
        "card_retries": retries, "payment_links": links, "actions": actions, "timeline": timeline,
    }


def _timeline(events, transitions, emails, notices, cards, retries, links, actions) -> list[dict]:
    """One list in time order: (at, kind, what, status, detail)."""
    items = []
    for e in events:
        items.append({"at": e["created_at"], "kind": "event", "what": e["type"], "status": e["status"],
                      "detail": f"{e['id']} · received {_short(e['received_at'])}", "ref": e["id"]})
    for x in transitions:
        items.append({"at": x["at"], "kind": "transition",
                      "what": f"{x['from_state'] or '(opened)'} → {x['to_state']}", "status": x["trigger"],
                      "detail": (x["event_id"] or "") + (f" step {x['step']}" if x["step"] is not None else ""),
                      "ref": x["id"]})
    for m in emails:
        items.append({"at": m["created_at"], "kind": "email", "what": m["template"], "status": m["status"],
                      "detail": f"to {m['recipient']}" + (f" · delivered {_short(m['sent_at'])}" if m["sent_at"]
                                                           else f" · attempts {m['attempts']}"), "ref": m["id"]})
    for n in notices:
        items.append({"at": n["created_at"], "kind": "notice", "what": n["type"], "status": n["status"],
                      "detail": f"attempts {n['attempts']}" + (f" · delivered {_short(n['delivered_at'])}"
                                                                if n["delivered_at"] else ""), "ref": n["id"]})
    for c in cards:
        expiry = f"{c['exp_month']:02d}/{c['exp_year']}" if c["exp_month"] and c["exp_year"] else "?"
        items.append({"at": c["recorded_at"], "kind": "card", "what": f"{c['brand'] or 'card'} ····{c['last4'] or '?'}",
                      "status": "default" if c["is_default"] else "", "detail": f"expires {expiry} · {c['event_type']}",
                      "ref": c["payment_method_id"]})
    for r in retries:
        items.append({"at": r["created_at"], "kind": "card retry", "what": r["payment_method_id"],
                      "status": r["status"], "detail": r["decline_code"] or "", "ref": r["id"]})
    for p in links:
        items.append({"at": p["requested_at"], "kind": "payment link", "what": p["id"], "status": p["status"],
                      "detail": f"by {p['requested_by'] or '?'}" + (f" · {p['last_error']}" if p["last_error"] else ""),
                      "ref": p["id"]})
    for a in actions:
        items.append({"at": a["at"], "kind": "console", "what": a["action"], "status": a["outcome"] or "",
                      "detail": f"by {a['actor']}: {a['reason']}", "ref": a["id"]})
    items.sort(key=lambda i: (i["at"] or datetime.min, i["kind"]))
    return items


def _short(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
