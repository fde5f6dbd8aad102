"""A Stripe API stand-in for the peer benchmark: answers the reads dj-stripe makes while it syncs.

dj-stripe processes each webhook in the request, and fetches from Stripe's API what its event
does not embed (the account of the API key, the customer, the subscription, the payment method,
...). This server answers those GETs as Stripe would: an object an event of the run carried
(`remember`, the latest version of it: dj-stripe fetches an invoice again before it syncs it), or
else one of the same shapes as the bench's events (bench/events.py) made up from the id asked
for, so every read succeeds and costs one local round trip. It counts the requests it answered
per resource, so the report can say how many API reads dj-stripe made per event.

Bench-only, standard library only. It is served by bench.local_server, as the SendGrid fake is:
on a thread of the bench's own process (its CPU is never counted as the peer's), with TCP_NODELAY
on every connection (the issue's condition: else the benchmark measures Nagle's algorithm, not
dj-stripe).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from bench.events import customer, payment_method
from bench.local_server import LocalServer

ACCOUNT_ID = "acct_bench_platform"


def account() -> dict:
    return {
        "id": ACCOUNT_ID, "object": "account", "business_type": "company", "charges_enabled": True,
        "country": "US", "created": 1_600_000_000, "default_currency": "usd", "details_submitted": True,
        "email": "billing@example.com", "payouts_enabled": True, "type": "standard", "metadata": {},
        "business_profile": {"name": "Example Platform, Inc.", "url": "https://example.com",
                             "support_email": "billing@example.com", "mcc": None, "product_description": None,
                             "support_phone": None, "support_url": None},
        "settings": {"branding": {"icon": None, "logo": None, "primary_color": None, "secondary_color": None},
                     "dashboard": {"display_name": "Example Platform", "timezone": "Etc/UTC"},
                     "payments": {"statement_descriptor": "EXAMPLE"}},
        "capabilities": {}, "requirements": {}, "tos_acceptance": {}, "external_accounts": {
            "object": "list", "data": [], "has_more": False, "url": f"/v1/accounts/{ACCOUNT_ID}/external_accounts"},
    }


def product(product_id: str) -> dict:
    return {"id": product_id, "object": "product", "active": True, "created": 1_600_000_000,
            "description": None, "images": [], "livemode": False, "metadata": {}, "name": "Pro",
            "type": "service", "updated": 1_600_000_000, "url": None, "statement_descriptor": None,
            "unit_label": None, "tax_code": None, "default_price": None, "marketing_features": [],
            "package_dimensions": None, "shippable": None}


def price(price_id: str) -> dict:
    return {"id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit",
            "created": 1_600_000_000, "currency": "usd", "livemode": False, "lookup_key": None,
            "metadata": {}, "nickname": None, "product": "prod_bench_pro",
            "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed",
                          "aggregate_usage": None, "trial_period_days": None, "meter": None},
            "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
            "type": "recurring", "unit_amount": 4900, "unit_amount_decimal": "4900"}


def subscription(subscription_id: str) -> dict:
    customer_id = "cus_" + subscription_id[4:]
    now = int(time.time())
    return {
        "id": subscription_id, "object": "subscription", "application": None,
        "application_fee_percent": None, "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": now - 86400, "billing_thresholds": None, "cancel_at": None,
        "cancel_at_period_end": False, "canceled_at": None, "collection_method": "charge_automatically",
        "created": now - 40 * 86400, "currency": "usd", "customer": customer_id,
        "days_until_due": None, "default_payment_method": f"pm_{customer_id[4:]}", "default_source": None,
        "description": None, "discounts": [], "ended_at": None, "latest_invoice": None, "livemode": False,
        "metadata": {"platform_account": f"acct_{customer_id[4:]}"}, "pending_setup_intent": None,
        "pending_update": None, "schedule": None, "start_date": now - 40 * 86400, "status": "past_due",
        "trial_end": None, "trial_start": None,
        "items": {"object": "list", "has_more": False, "total_count": 1,
                  "url": f"/v1/subscription_items?subscription={subscription_id}", "data": [{
                      "id": f"si_{subscription_id[4:]}", "object": "subscription_item", "created": now - 40 * 86400,
                      "current_period_end": now + 29 * 86400, "current_period_start": now - 86400,
                      "metadata": {}, "price": price("price_bench_pro"), "quantity": 1,
                      "subscription": subscription_id, "tax_rates": [], "discounts": []}]},
    }


def _made_up(resource: str, object_id: str) -> dict | None:
    """The object `GET /v1/<resource>/<object_id>` answers, or None (404)."""
    now = int(time.time())
    if resource == "customers":
        return customer(object_id, now - 86400)
    if resource == "payment_methods":
        pm = payment_method("cus_" + object_id[3:], now - 3600)
        return {**pm, "id": object_id}
    if resource == "subscriptions":
        return subscription(object_id)
    if resource == "prices":
        return price(object_id)
    if resource == "products":
        return product(object_id)
    if resource == "accounts":
        return account()
    return None


class StripeStub(LocalServer):
    """The stub's server (bench.local_server: TCP_NODELAY), its remembered objects and its read counts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.reads: Counter[str] = Counter()
        self.objects: dict[str, dict] = {}  # id -> the latest version an event carried
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = [p for p in urlsplit(self.path).path.split("/") if p]
                found = None
                if parts[:1] == ["v1"] and self.command == "GET":
                    if parts[1:] == ["account"]:
                        found = account()
                    elif len(parts) == 3:
                        found = stub.objects.get(parts[2]) or _made_up(parts[1], parts[2])
                resource = parts[1] if len(parts) > 1 else "?"
                with stub._lock:
                    stub.reads[f"{self.command} {resource}" + ("" if found else " (404)")] += 1
                status, body = (200, found) if found else (404, {"error": {
                    "type": "invalid_request_error", "message": f"No such object: {self.path}"}})
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Request-Id", "req_bench")
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _answer  # noqa: N815 (http.server's naming)

            def log_message(self, *_args):
                pass

        super().__init__(Handler, host, port, name="stripe-stub")

    def remember(self, event_bodies) -> None:
        """Answer for each event's object with the version the latest of these events carried."""
        for body in event_bodies:
            obj = json.loads(body)["data"]["object"]
            self.objects[obj["id"]] = obj

