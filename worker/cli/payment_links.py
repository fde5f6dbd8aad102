"""`dunning payment-link INVOICE`: ask for a payment link from the command line (same rules as the API)."""

from __future__ import annotations

import sys

import click

from worker.cli.base import emit, get_runtime, main


@main.command("payment-link")
@click.argument("invoice_id")
@click.option("--requested-by", default=None, help="who asked (audit trail)")
@click.option("--note", default=None, help="why (audit trail)")
@click.option("--json", "as_json", is_flag=True)
def payment_link(invoice_id: str, requested_by: str | None, note: str | None, as_json: bool) -> None:
    """Send the owner of record a link to pay INVOICE (in_...); a worker creates it at Stripe."""
    from worker.stripe.payment_links import PaymentLinkRefused, request_links
    runtime = get_runtime()
    body = {"invoice": invoice_id}
    if requested_by is not None:
        body["requested_by"] = requested_by
    if note is not None:
        body["note"] = note
    try:
        created = request_links(runtime, body)
    except PaymentLinkRefused as exc:
        if as_json:
            emit({"error": exc.message, "status": exc.status}, True)
        else:
            click.echo(f"refused ({exc.status}): {exc.message}", err=True)
        sys.exit(1)
    emit({"id": created[0]["id"], "ids": [c["id"] for c in created], "requests": created,
          "status": "requested"}, as_json,
         lambda d: click.echo(f"requested {d['id']} for {invoice_id}: the owner of record will get the link"))
