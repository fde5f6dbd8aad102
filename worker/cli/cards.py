"""`dunning cards show CUSTOMER`: the cards we recorded for a customer, and the immediate retries they caused."""

from __future__ import annotations

import sys

import click
from sqlalchemy import desc, select

from worker.cli.base import emit, get_runtime, main
from worker.pure.clock import isoformat


@main.group()
def cards() -> None:
    """Recorded cards (brand, last four, expiry, funding, fingerprint; never more)."""


def card_summary(runtime, customer_id: str) -> dict | None:
    """The customer's cards (latest row per card, newest first), their history and card retries."""
    db = runtime.db
    customers, cards_t, retries = db.table("customers"), db.table("cards"), db.table("card_retries")
    with db.reading(snapshot=True) as conn:
        customer = conn.execute(select(customers).where(customers.c.id == customer_id)).mappings().first()
        history = [dict(r) for r in conn.execute(
            select(cards_t).where(cards_t.c.customer_id == customer_id)
            .order_by(desc(cards_t.c.recorded_at), desc(cards_t.c.id))).mappings()]
        retry_rows = [dict(r) for r in conn.execute(
            select(retries).where(retries.c.customer_id == customer_id).order_by(desc(retries.c.created_at)))
            .mappings()]
    if customer is None and not history:
        return None
    default = customer["default_payment_method"] if customer else None
    latest: dict[str, dict] = {}
    for row in history:
        known = latest.setdefault(row["payment_method_id"], {
            "payment_method_id": row["payment_method_id"], "is_default": row["payment_method_id"] == default,
            "brand": None, "last4": None, "exp_month": None, "exp_year": None, "funding": None,
            "fingerprint": None, "last_event_id": row["event_id"], "last_event_type": row["event_type"],
            "recorded_at": isoformat(row["recorded_at"]), "events": 0})
        known["events"] += 1
        for key in ("brand", "last4", "exp_month", "exp_year", "funding", "fingerprint"):
            if known[key] is None and row[key] is not None:
                known[key] = row[key]  # newest value that was known
    return {
        "customer": customer_id,
        "default_payment_method": default,
        "cards": list(latest.values()),
        "history": [{"payment_method_id": r["payment_method_id"], "brand": r["brand"], "last4": r["last4"],
                     "exp_month": r["exp_month"], "exp_year": r["exp_year"], "is_default": bool(r["is_default"]),
                     "event_id": r["event_id"], "event_type": r["event_type"],
                     "recorded_at": isoformat(r["recorded_at"])} for r in history],
        "retries": [{"id": r["id"], "invoice_id": r["invoice_id"], "payment_method_id": r["payment_method_id"],
                     "status": r["status"], "decline_code": r["decline_code"], "last_error": r["last_error"],
                     "created_at": isoformat(r["created_at"]), "finished_at": isoformat(r["finished_at"])}
                    for r in retry_rows],
    }


@cards.command("show")
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True)
def cards_show(customer_id: str, as_json: bool) -> None:
    """The cards of CUSTOMER (cus_...): default first, with the events that told us and the retries."""
    runtime = get_runtime(broker=False)
    data = card_summary(runtime, customer_id)
    if data is None:
        click.echo(f"no customer or card recorded for {customer_id}", err=True)
        sys.exit(1)

    def render(d):
        click.echo(f"customer {d['customer']}  default={d['default_payment_method'] or '-'}")
        if not d["cards"]:
            click.echo("  no card recorded")
        for c in sorted(d["cards"], key=lambda c: not c["is_default"]):
            exp = f"{c['exp_month']:02d}/{c['exp_year']}" if c["exp_month"] and c["exp_year"] else "--/----"
            click.echo(f"  {'*' if c['is_default'] else ' '} {c['payment_method_id']}  {c['brand'] or '?'} "
                       f"**** {c['last4'] or '????'}  exp {exp}  {c['funding'] or ''}  "
                       f"last={c['last_event_type']} at {c['recorded_at']} ({c['events']} event(s))")
        for r in d["retries"]:
            click.echo(f"  retry {r['id']} {r['invoice_id']} with {r['payment_method_id']}: {r['status']}"
                       + (f" ({r['decline_code']})" if r["decline_code"] else ""))
    emit(data, as_json, render)
