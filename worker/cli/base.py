"""What every `dunning` command shares: the click group, JSON-or-readable output, the runtime."""

from __future__ import annotations

import json
import os
import secrets
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


# Secrets only the web process uses (it checks Stripe's signatures and the admin token). Every other
# command runs without them: an operator reading `dunning stats` needs only DATABASE_URL (and the
# broker for queue commands). Unset, they get throwaway random values no one can know or use.
SERVICE_SECRETS = ("STRIPE_WEBHOOK_SECRET", "ADMIN_TOKEN")


def _environment(needs_secrets: bool) -> dict[str, str] | None:
    if needs_secrets:
        return None  # os.environ as it is: a missing secret stops the command
    env = dict(os.environ)
    for name in SERVICE_SECRETS:
        if not env.get(name, "").strip():
            env[name] = f"unused-{secrets.token_hex(24)}"
    return env


def get_runtime(*, broker: bool = True, needs_secrets: bool = False):
    """The runtime for a CLI command; a configuration error is one clear line and exit 2.

    broker=False: a stub broker (the command reads the database only).
    needs_secrets: the command serves webhooks or the admin API (`dunning web`).
    """
    from config.settings import load_settings
    from worker import runtime as rt
    try:
        if broker and rt._current is not None:
            return rt.setup()  # this process already built its runtime
        settings = load_settings(_environment(needs_secrets))
        if broker:
            return rt.setup(settings)
        from worker.queue.broker import make_stub_broker
        return rt.setup(settings, make_stub_broker())
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dunning-worker")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


@click.group()
@click.version_option(_version(), "--version", prog_name="dunning", message="%(prog)s %(version)s")
def main() -> None:
    """Dunning worker: recover failed Stripe subscription payments."""
