"""`dunning events backfill --since DATE`: fetch from Stripe what the webhook missed (worker/intake/backfill.py)."""

from __future__ import annotations

import sys
from contextlib import nullcontext

import click

from worker.cli.base import emit, get_runtime
from worker.cli.core import events


@events.command("backfill")
@click.option("--since", required=True, help="e.g. 2026-11-01 or 2026-11-01T12:00:00Z (Stripe keeps 30 days)")
@click.option("--json", "as_json", is_flag=True)
def events_backfill(since: str, as_json: bool) -> None:
    """Page Stripe's Events API for the dunning event types; store the unseen ones and enqueue them.

    Resumable (progress is saved after every page) and idempotent (a second run changes nothing).
    """
    from config.settings import ConfigError
    from worker.intake.backfill import backfill, type_groups
    from worker.pure.clock import parse_instant, to_unix, utcnow
    from worker.stripe.gateway import StripeNotConfigured
    try:
        start = parse_instant(since)
    except ValueError:
        raise click.BadParameter(f"not a date or instant: {since!r}", param_hint="--since") from None
    runtime = get_runtime()
    span = max(1, to_unix(utcnow()) - to_unix(start)) * len(type_groups())
    bar = (click.progressbar(length=span, label="backfilling events", file=sys.stderr)
           if sys.stderr.isatty() else nullcontext(None))
    try:
        with bar as progress:
            result = backfill(runtime, start, on_progress=progress.update if progress is not None else None)
    except (ConfigError, StripeNotConfigured) as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    emit(result.as_dict(), as_json,
         lambda d: click.echo(f"pages={d['pages']} seen={d['seen']} stored={d['stored']} "
                              f"already_stored={d['already_stored']} enqueued={d['enqueued']}"
                              + (" (resumed)" if d["resumed"] else "")))
