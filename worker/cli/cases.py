"""`dunning cases list|show`: where each dunning case stands and how it got there.

Everything is read from the tables (cases, case_transitions, events, emails, platform_notices,
payment_links, card_retries), so it answers the same whether the workers run or not.
"""

from __future__ import annotations

import os
import sys

import click
from sqlalchemy import or_, select

from worker.cli.base import emit, get_runtime, main
from worker.console.cases import next_step
from worker.pure.clock import from_unix, isoformat
from worker.infra.db import about_case
from worker.observe.logs import mask_email


def _iso(row: dict) -> dict:
    """Datetimes as ISO-8601 'Z' strings (readable, and the same in --json)."""
    return {k: (isoformat(v) if hasattr(v, "isoformat") and not isinstance(v, str) else v)
            for k, v in row.items()}


def list_cases(db, *, state: str | None = None, customer: str | None = None, limit: int = 100,
               unreachable: bool = False) -> list[dict]:
    cases = db.table("cases")
    stmt = select(cases.c.id, cases.c.invoice_id, cases.c.customer_id, cases.c.subscription_id,
                  cases.c.state, cases.c.schedule, cases.c.currency, cases.c.amount_due,
                  cases.c.opened_at, cases.c.next_step, cases.c.next_step_at, cases.c.disrupt_at,
                  cases.c.closed_at, cases.c.owner_unreachable, cases.c.hold_released
                  ).order_by(cases.c.opened_at.desc(), cases.c.id).limit(limit)
    if state:
        stmt = stmt.where(cases.c.state == state)
    if unreachable:  # open cases whose owner cannot be mailed (held unless released or policy "proceed")
        from handlers.dunning import OPEN_STATES
        stmt = stmt.where(cases.c.owner_unreachable == 1, cases.c.state.in_(OPEN_STATES))
    if customer:
        stmt = stmt.where(cases.c.customer_id == customer)
    with db.reading() as conn:
        return [_iso(dict(r)) for r in conn.execute(stmt).mappings()]


def case_detail(runtime, key: str) -> dict | None:
    """The case of an invoice (or a case id): its rows, and a timeline of everything that touched it."""
    db = runtime.db
    t = db.tables
    cases, events = t["cases"], t["events"]
    with db.reading(snapshot=True) as conn:
        case = conn.execute(select(cases).where(or_(cases.c.invoice_id == key, cases.c.id == key))
                            ).mappings().first()
        invoice_id = case["invoice_id"] if case else key
        invoice = conn.execute(select(t["invoices"]).where(t["invoices"].c.id == invoice_id)).mappings().first()
        if case is None and invoice is None:
            return None
        case_id = case["id"] if case else None

        transitions = []
        if case_id:
            tr = t["case_transitions"]
            transitions = [dict(r) for r in conn.execute(
                select(tr).where(tr.c.case_id == case_id).order_by(tr.c.at, tr.c.id)).mappings()]
        # Events about the invoice: its id in the payload, or named by a transition.
        caused_by = [x["event_id"] for x in transitions if x["event_id"]]
        about = events.c.payload.contains(f'"{invoice_id}"', autoescape=True)
        if caused_by:
            about = or_(about, events.c.id.in_(caused_by))
        timeline = [dict(r) for r in conn.execute(
            select(events.c.id, events.c.type, events.c.created, events.c.status, events.c.source,
                   events.c.received_at, events.c.processed_at, events.c.last_error)
            .where(about).order_by(events.c.created, events.c.id)).mappings()]

        emails_t = t["emails"]
        email_about = about_case(emails_t, invoice_id, case_id)
        emails = [dict(r) for r in conn.execute(
            select(emails_t.c.id, emails_t.c.template, emails_t.c.recipient, emails_t.c.status,
                   emails_t.c.attempts, emails_t.c.last_error, emails_t.c.created_at, emails_t.c.sent_at,
                   emails_t.c.next_attempt_at, emails_t.c.dedupe_key)
            .where(email_about).order_by(emails_t.c.created_at, emails_t.c.id)).mappings()]
        for email in emails:
            email["recipient"] = mask_email(email["recipient"])

        nt = t["platform_notices"]
        notice_about = about_case(nt, invoice_id, case_id)
        notices = [dict(r) for r in conn.execute(
            select(nt.c.id, nt.c.type, nt.c.account_id, nt.c.seq, nt.c.status, nt.c.attempts,
                   nt.c.last_error, nt.c.created_at, nt.c.delivered_at)
            .where(notice_about).order_by(nt.c.seq, nt.c.created_at)).mappings()]

        pl = t["payment_links"]
        links = [dict(r) for r in conn.execute(
            select(pl.c.id, pl.c.status, pl.c.amount, pl.c.currency, pl.c.url, pl.c.expires_at,
                   pl.c.requested_by, pl.c.requested_at, pl.c.last_error)
            .where(pl.c.invoice_id == invoice_id).order_by(pl.c.requested_at)).mappings()]
        cr = t["card_retries"]
        retries = [dict(r) for r in conn.execute(
            select(cr.c.id, cr.c.payment_method_id, cr.c.status, cr.c.decline_code, cr.c.last_error,
                   cr.c.created_at, cr.c.finished_at)
            .where(cr.c.invoice_id == invoice_id).order_by(cr.c.created_at)).mappings()]

    step = next_step(runtime.policy, dict(case)) if case else None
    detail = {
        "invoice_id": invoice_id,
        "case": _iso(dict(case)) if case else None,
        "invoice": _iso(dict(invoice)) if invoice else None,
        "next_step": _iso(step) if step else None,
        "disrupt_at": isoformat(case["disrupt_at"]) if case else None,
        "events": [_iso({**e, "created_at": from_unix(e["created"])}) for e in timeline],
        "transitions": [_iso(x) for x in transitions],
        "emails": [_iso(e) for e in emails],
        "notices": [_iso(n) for n in notices],
        "payment_links": [_iso(x) for x in links],
        "card_retries": [_iso(x) for x in retries],
    }
    return detail


@main.group()
def cases() -> None:
    """Dunning cases: one per failed invoice."""


@cases.command("list")
@click.option("--state", default=None, help="failing, disruption_scheduled, disrupted, recovered, ...")
@click.option("--customer", default=None, help="a Stripe customer id (cus_...)")
@click.option("--limit", default=100, show_default=True)
@click.option("--unreachable", is_flag=True, help="only open cases whose owner has no deliverable address")
@click.option("--json", "as_json", is_flag=True)
def cases_list(state, customer, limit, unreachable, as_json) -> None:
    """Cases, newest first."""
    runtime = get_runtime(broker=False)
    data = list_cases(runtime.db, state=state, customer=customer, limit=limit, unreachable=unreachable)

    def render(items):
        if not items:
            click.echo("no cases")
        for c in items:
            due = f"next step {c['next_step']} at {c['next_step_at']}" if c["next_step"] is not None else "no step due"
            disrupt = f"  disrupt_at={c['disrupt_at']}" if c["disrupt_at"] else ""
            held = ("  owner unreachable" + (" (released)" if c["hold_released"] else "")) \
                if c["owner_unreachable"] else ""
            click.echo(f"{c['invoice_id']:28} {c['state']:22} {c['customer_id']:20} "
                       f"{c['amount_due']} {c['currency']}  {due}{disrupt}{held}")
    emit(data, as_json, render)


@cases.command("release")
@click.argument("case")
@click.option("--by", "released_by", default=lambda: os.environ.get("USER") or "operator",
              show_default="$USER", help="who decides (recorded)")
@click.option("--reason", required=True, help="why disruption may proceed without reaching the owner")
@click.option("--json", "as_json", is_flag=True)
def cases_release(case, released_by, reason, as_json) -> None:
    """Let disruption of a held case (owner unreachable) proceed on schedule: CASE is a case or invoice id."""
    from handlers.reachability import ReleaseError
    from worker.delivery.reachability import release_case
    runtime = get_runtime(broker=False)  # a row change: the scheduler's next pass runs the released step
    try:
        released = release_case(runtime, case, released_by=released_by, reason=reason)
    except ReleaseError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    data = {"case": released["id"], "invoice_id": released["invoice_id"], "released_by": released_by,
            "hold_released": bool(released["hold_released"]), "next_step_at": isoformat(released["next_step_at"])}
    emit(data, as_json, lambda d: click.echo(f"released {d['case']} (invoice {d['invoice_id']}) by {d['released_by']}"))


@cases.command("show")
@click.argument("invoice")
@click.option("--json", "as_json", is_flag=True)
def cases_show(invoice, as_json) -> None:
    """One case (by invoice id or case id): rows, events, transitions, emails, notices, next step."""
    runtime = get_runtime(broker=False)
    data = case_detail(runtime, invoice)
    if data is None:
        click.echo(f"no case or invoice {invoice}", err=True)
        sys.exit(1)
    emit(data, as_json, _render_detail)


def _render_detail(d: dict) -> None:
    case = d["case"]
    if case:
        click.echo(f"case {case['id']}  invoice {case['invoice_id']}  customer {case['customer_id']}  "
                   f"account {case['account_id']}")
        click.echo(f"  state {case['state']}  schedule {case['schedule']}  {case['amount_due']} {case['currency']}"
                   f"  opened {case['opened_at']}  closed {case['closed_at'] or '-'}")
    else:
        click.echo(f"invoice {d['invoice_id']}: no dunning case")
    step = d["next_step"]
    if step:
        what = f"{step.get('email', '?')}" + (f" + {step['action']}" if step.get("action") else "")
        click.echo(f"  next step {step['index']} (day {step.get('day', '?')}: {what}) due {step['due_at']}")
    elif case:
        click.echo("  next step: none")
    click.echo(f"  disrupt_at {d['disrupt_at'] or '-'}")
    sections = (
        ("events", lambda e: f"{e['created_at']}  {e['id']}  {e['type']}  {e['status']} ({e['source']}, "
         f"received {e['received_at']})"
         + (f"  error={e['last_error'][:80]}" if e["last_error"] else "")),
        ("transitions", lambda x: f"{x['at']}  {x['from_state'] or '(opened)'} -> {x['to_state']}"
         f"  by {x['trigger']}" + (f" [{x['event_id']}]" if x["event_id"] else "")
         + (f" step {x['step']}" if x["step"] is not None else "")),
        ("emails", lambda e: f"{e['created_at']}  {e['id']}  {e['template']}  {e['status']} to {e['recipient']}"
         f"  attempts={e['attempts']}" + (f"  error={e['last_error'][:80]}" if e["last_error"] else "")),
        ("notices", lambda n: f"{n['created_at']}  {n['id']}  {n['type']}  seq={n['seq']}  {n['status']}"
         f"  attempts={n['attempts']}" + (f"  error={n['last_error'][:80]}" if n["last_error"] else "")),
        ("payment_links", lambda p: f"{p['requested_at']}  {p['id']}  {p['status']}  {p['url'] or ''}"),
        ("card_retries", lambda r: f"{r['created_at']}  {r['id']}  {r['payment_method_id']}  {r['status']}"
         + (f" ({r['decline_code']})" if r["decline_code"] else "")),
    )
    for name, line in sections:
        items = d[name]
        click.echo(f"{name} ({len(items)})")
        for item in items:
            click.echo("  " + line(item))
