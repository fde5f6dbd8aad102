"""`dunning stripe webhook-endpoint create --url URL`: the Stripe side of the set-up, in one command.

Like Laravel Cashier's `cashier:webhook`: the endpoint is created with exactly the event types the
registry handles (handlers/registry.py, so a new handler cannot be forgotten in the dashboard) at
the API version the service speaks, and its signing secret is printed once for
STRIPE_WEBHOOK_SECRET (append it to the current one, comma-separated, to rotate without a gap).
"""

from __future__ import annotations

import sys

import click

from worker.cli.base import emit, get_runtime, main


@main.group("stripe")
def stripe_group() -> None:
    """Set up the Stripe side (needs STRIPE_API_KEY)."""


@stripe_group.group("webhook-endpoint")
def webhook_endpoint() -> None:
    """The webhook endpoint Stripe sends events to."""


@webhook_endpoint.command("create")
@click.option("--url", required=True, help="the public URL of POST /webhooks/stripe")
@click.option("--json", "as_json", is_flag=True)
def create(url: str, as_json: bool) -> None:
    """Create the endpoint for every event type the service handles; print its signing secret."""
    from handlers.registry import known_types
    from worker.pure.ids import new_id
    from worker.stripe.gateway import STRIPE_API_VERSION, StripeGatewayError, gateway
    if not url.startswith("https://") and not url.startswith("http://"):
        raise click.BadParameter("must be an http(s) URL", param_hint="--url")
    runtime = get_runtime(broker=False)
    events = sorted(known_types())
    try:
        endpoint = gateway(runtime).create_webhook_endpoint(url, events, new_id("whcreate"))
    except StripeGatewayError as exc:
        click.echo(f"stripe: {exc}", err=True)
        sys.exit(1)
    data = {"id": endpoint.get("id"), "url": endpoint.get("url"), "api_version": STRIPE_API_VERSION,
            "enabled_events": endpoint.get("enabled_events"), "secret": endpoint.get("secret")}

    def render(d):
        click.echo(f"created {d['id']} for {d['url']} (API version {d['api_version']}, "
                   f"{len(d['enabled_events'] or [])} event types)")
        click.echo(f"STRIPE_WEBHOOK_SECRET={d['secret']}")
    emit(data, as_json, render)
