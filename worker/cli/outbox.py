"""`dunning outbox list|retry`: emails and platform notices not yet delivered, and a way to push one again.

The outbox rows are the truth (worker/delivery/outbox.py writes them, the sender actors deliver them);
a retry resets the row to pending and due now, then enqueues its sender, exactly as the
scheduler's sweep would.
"""

from __future__ import annotations

import sys

import click

from worker.cli.base import emit, get_runtime, main
from worker.delivery.outbox_admin import OutboxError, list_outbox, retry


@main.group()
def outbox() -> None:
    """Emails and platform notices waiting to be delivered."""


@outbox.command("list")
@click.option("--pending", is_flag=True, help="only rows still to be delivered (pending, sending)")
@click.option("--failed", is_flag=True, help="only rows that gave up")
@click.option("--json", "as_json", is_flag=True)
def outbox_list(pending, failed, as_json) -> None:
    """Undelivered emails and notices, oldest first (both pending and failed unless one is chosen)."""
    runtime = get_runtime(broker=False)
    if not pending and not failed:
        pending = failed = True
    data = list_outbox(runtime.db, pending=pending, failed=failed)

    def render(items):
        if not items:
            click.echo("outbox empty")
        for r in items:
            to = r.get("recipient") or r.get("account_id")
            click.echo(f"{r['created_at']}  {r['kind']:6} {r['id']:28} {r['name']:30} {r['status']:8} "
                       f"attempts={r['attempts']} next={r['next_attempt_at']} to={to}"
                       + (f"  error={r['last_error'][:80]}" if r["last_error"] else ""))
    emit(data, as_json, render)


@outbox.command("retry")
@click.argument("row_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
def outbox_retry(row_id, as_json) -> None:
    """Reset one email or notice to pending, due now, and enqueue its delivery."""
    runtime = get_runtime()
    try:
        data = retry(runtime, row_id)
    except OutboxError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    emit(data, as_json, lambda d: click.echo(f"{d['kind']} {d['id']} is due now ({d['enqueued']} enqueued)"))
