"""Personal data: `dunning customers erase|export CUSTOMER` and `dunning data prune`.

Errors are one line: an unknown customer exits 1; an unparsable `--at` exits 2 naming the flag.
"""

from __future__ import annotations

import getpass
import json
import sys

import click

from worker.cli.base import emit, get_runtime, main


@main.group()
def customers() -> None:
    """What is held about a customer: export it, erase it."""


@customers.command("erase")
@click.argument("customer_id")
@click.option("--reason", required=True, help="why (recorded with the erasure; addresses are masked)")
@click.option("--by", "requested_by", default=None, help="who asked (default: cli:<login>)")
@click.option("--json", "as_json", is_flag=True)
def customers_erase(customer_id: str, reason: str, requested_by: str | None, as_json: bool) -> None:
    """Erase every piece of personal data held about CUSTOMER (cus_...), at once."""
    from worker.privacy.erasure import ErasureRefused, UnknownCustomer, erase_customer
    runtime = get_runtime()
    who = requested_by or f"cli:{getpass.getuser()}"
    try:
        result = erase_customer(runtime, customer_id, requested_by=who, reason=reason)
    except (UnknownCustomer, ErasureRefused) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    emit(result, as_json, lambda d: click.echo(
        f"{'already erased; scrubbed again' if d['already_erased'] else 'erased'} {customer_id}: "
        f"{sum(d['rows'].values())} row(s) changed, {d['cases_closed']} open case(s) closed"))


@customers.command("export")
@click.argument("customer_id")
def customers_export(customer_id: str) -> None:
    """Print one JSON document with everything held about CUSTOMER."""
    from worker.privacy.customer_export import export_customer
    from worker.privacy.erasure import UnknownCustomer
    runtime = get_runtime(broker=False)
    try:
        doc = export_customer(runtime.db, customer_id)
    except UnknownCustomer as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str, ensure_ascii=False))


@main.group()
def data() -> None:
    """Retention of stored data ([retention] in the policy)."""


@data.command("prune")
@click.option("--at", "at", default=None, help="apply the retention as of this instant (ISO 8601)")
@click.option("--dry-run", is_flag=True, help="print what would be removed; remove nothing")
@click.option("--json", "as_json", is_flag=True)
def data_prune(at: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove what the retention no longer allows, in batches of at most 1,000 rows."""
    from worker.pure.clock import parse_instant, utcnow
    from worker.privacy.retention import PruneBusy, prune
    try:
        now = parse_instant(at) if at else utcnow()
    except (ValueError, TypeError):
        click.echo(f"error: --at: {at!r} is not an ISO-8601 instant (e.g. 2026-12-01T00:00:00Z)", err=True)
        sys.exit(2)
    import time
    runtime = get_runtime(broker=False)
    began = time.monotonic()
    try:
        counts = prune(runtime, now, dry_run=dry_run)
    except PruneBusy as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    verb = "would remove" if dry_run else "removed"
    emit({"at": now.isoformat() + "Z", "dry_run": dry_run, "removed": counts,
          "seconds": round(time.monotonic() - began, 3)}, as_json,
         lambda d: [click.echo(f"{name:16} {verb} {n}") for name, n in d["removed"].items()])
