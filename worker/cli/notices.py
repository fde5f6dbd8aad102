"""`dunning notices redeliver --failed | --account ID`: push failed platform notices again, in order."""

from __future__ import annotations

import sys

import click

from worker.cli.base import emit, get_runtime, main


@main.group()
def notices() -> None:
    """Platform notices (service.disruption_scheduled, service.disrupted, ...)."""


@notices.command("redeliver")
@click.option("--account", "account_id", metavar="ID", help="only this account's failed notices")
@click.option("--failed", "all_failed", is_flag=True, help="every account's failed notices")
@click.option("--json", "as_json", is_flag=True)
def notices_redeliver(account_id, all_failed, as_json) -> None:
    """Make failed notices pending again (in seq order per account) and enqueue their delivery.

    A failed notice that a later delivered notice of its account supersedes is skipped (reported).
    """
    from worker.delivery.notice_redelivery import redeliver_failed
    if bool(account_id) == bool(all_failed):
        click.echo("give exactly one of --account ID or --failed", err=True)
        sys.exit(2)
    data = redeliver_failed(get_runtime(), account_id)

    def render(d):
        for row in d["redelivered"]:
            click.echo(f"redeliver  {row['account_id']:32} seq={row['seq']:<4} {row['type']:30} {row['id']}")
        for row in d["superseded"]:
            click.echo(f"superseded {row['account_id']:32} seq={row['seq']:<4} {row['type']:30} {row['id']}")
        click.echo(f"{len(d['redelivered'])} notice(s) of {len(d['accounts'])} account(s) due now; "
                   f"{len(d['superseded'])} superseded")
    emit(data, as_json, render)
