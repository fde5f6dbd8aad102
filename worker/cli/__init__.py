"""`dunning`: the operators' command line. Every read command has --json."""

from __future__ import annotations

import json
import sys

import click

from config.settings import ConfigError


def emit(data, as_json: bool, render=None) -> None:
    """Print JSON (machine) or a readable rendering (human)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif render is not None:
        render(data)
    else:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def get_runtime(*, broker: bool = True):
    """The runtime for a CLI command; a configuration error is one clear line and exit 2."""
    from worker.runtime import setup
    try:
        if broker:
            return setup()
        from config.settings import load_settings
        from worker.broker import make_stub_broker
        return setup(load_settings(), make_stub_broker())
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Dunning worker: recover failed Stripe subscription payments."""


# Command groups live in their own modules; each registers itself on `main` when imported.
from worker.cli import core  # noqa: E402,F401  (db, stats, events, tick, run, web, worker, scheduler)
from worker.cli import policy  # noqa: E402,F401  (policy show)
from worker.cli import accounts  # noqa: E402,F401  (accounts show)
from worker.cli import cases  # noqa: E402,F401  (cases list, cases show)
from worker.cli import outbox  # noqa: E402,F401  (outbox list, outbox retry)
from worker.cli import dlq  # noqa: E402,F401  (dlq list, dlq requeue)
from worker.cli import cards  # noqa: E402,F401  (cards show)
from worker.cli import payment_links  # noqa: E402,F401  (payment-link)
from worker.cli import backfill  # noqa: E402,F401  (events backfill)
from worker.cli import emails  # noqa: E402,F401  (emails preview)
from worker.cli import notices  # noqa: E402,F401  (notices redeliver)
from worker.cli import privacy  # noqa: E402,F401  (customers erase/export, data prune)
