"""`dunning accounts show CUSTOMER`: the customer's service status, as the platform may poll it."""

from __future__ import annotations

import click

from worker.cli.base import emit, get_runtime, main


@main.group()
def accounts() -> None:
    """Service status per account (a subscription, else a customer)."""


@accounts.command("show")
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True)
def accounts_show(customer_id: str, as_json: bool) -> None:
    """active, disruption_scheduled (with the date) or disrupted, overall and per subscription."""
    from handlers.accounts import status_of_customer
    runtime = get_runtime(broker=False)
    with runtime.db.reading(snapshot=True) as conn:
        data = status_of_customer(conn, runtime.db, customer_id)

    def render(d):
        line = f"{d['customer']}: {d['status']}"
        if d["disrupt_at"]:
            line += f" (disruption date {d['disrupt_at']})"
        click.echo(line)
        for a in d["accounts"]:
            click.echo(f"  {a['account']:32} {a['status']:22} disrupt_at={a['disrupt_at'] or '-'}"
                       f" disrupted_at={a['disrupted_at'] or '-'}")
    emit(data, as_json, render)
