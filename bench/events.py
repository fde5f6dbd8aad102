"""Stripe events for the load: realistic shapes (API 2025-03-31.basil), unique ids per run.

The bench never reads ../shared: a user's machine has only this repository. The objects carry the
fields the handlers read (customer, parent.subscription_details, lines with price/product,
payment intent, last finalization error, card details) and about the size Stripe sends (~3 KB).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass


API_VERSION = "2025-03-31.basil"
# The realistic mix of the issue: 70% failed payments (each opens a case), 20% paid, 10% updates.
MIX = (("invoice.payment_failed", 0.70), ("invoice.paid", 0.20), ("customer.updated", 0.05),
       ("payment_method.attached", 0.05))


@dataclass(frozen=True)
class Planned:
    """One event the load will post: its body, and what it should lead to."""
    event_id: str
    type: str
    invoice_id: str | None
    body: str
    customer_id: str | None = None


def _envelope(event_id: str, event_type: str, obj: dict, created: int,
              previous_attributes: dict | None = None) -> dict:
    data: dict = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {"id": event_id, "object": "event", "api_version": API_VERSION, "created": created,
            "data": data, "livemode": False, "pending_webhooks": 1,
            "request": {"id": f"req_{event_id[4:18]}", "idempotency_key": None}, "type": event_type}


def customer(customer_id: str, created: int) -> dict:
    return {
        "id": customer_id, "object": "customer", "address": None, "balance": 0, "created": created,
        "currency": "usd", "default_source": None, "delinquent": True, "description": None,
        "discount": None, "email": f"owner+{customer_id[4:]}@example.com", "invoice_prefix": "B3C1D2E4",
        "invoice_settings": {"custom_fields": None, "default_payment_method": f"pm_{customer_id[4:]}",
                             "footer": None, "rendering_options": None},
        "livemode": False, "metadata": {"platform_account": f"acct_{customer_id[4:]}", "plan": "pro"},
        "name": "Example Owner", "phone": None, "preferred_locales": ["en"], "shipping": None,
        "tax_exempt": "none", "test_clock": None,
    }


def invoice(invoice_id: str, customer_id: str, subscription_id: str, created: int, *, paid: bool) -> dict:
    amount = 4900
    return {
        "id": invoice_id, "object": "invoice", "account_country": "US",
        "account_name": "Example Platform, Inc.", "amount_due": amount,
        "amount_paid": amount if paid else 0, "amount_remaining": 0 if paid else amount,
        "amount_shipping": 0, "attempt_count": 1, "attempted": True, "auto_advance": not paid,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_reason": "subscription_cycle", "collection_method": "charge_automatically",
        "created": created - 60, "currency": "usd", "customer": customer_id,
        "customer_email": f"owner+{customer_id[4:]}@example.com", "customer_name": "Example Owner",
        "default_payment_method": None, "description": None, "discounts": [], "due_date": None,
        "ending_balance": 0, "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_x/test_{invoice_id}",
        "invoice_pdf": f"https://pay.stripe.com/invoice/acct_x/test_{invoice_id}/pdf",
        "last_finalization_error": None if paid else {
            "code": "card_declined", "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.", "type": "card_error"},
        "lines": {"object": "list", "has_more": False, "total_count": 1,
                  "url": f"/v1/invoices/{invoice_id}/lines", "data": [{
                      "id": f"il_{invoice_id[3:]}", "object": "line_item", "amount": amount,
                      "currency": "usd", "description": "1 x Pro (at $49.00 / month)",
                      "discountable": True, "discounts": [], "livemode": False, "metadata": {},
                      "parent": {"type": "subscription_item_details", "subscription_item_details": {
                          "subscription": subscription_id, "subscription_item": f"si_{invoice_id[3:]}",
                          "proration": False}},
                      "period": {"end": created + 30 * 86400, "start": created},
                      "pricing": {"type": "price_details", "unit_amount_decimal": str(amount),
                                  "price_details": {"price": "price_bench_pro", "product": "prod_bench_pro"}},
                      "quantity": 1, "taxes": []}]},
        "livemode": False, "metadata": {},
        "next_payment_attempt": None if paid else created + 3 * 86400,
        "number": f"BENCH-{invoice_id[-8:]}", "on_behalf_of": None,
        "parent": {"type": "subscription_details", "quote_details": None, "subscription_details": {
            "metadata": {"platform_account": f"acct_{customer_id[4:]}"}, "subscription": subscription_id}},
        "payment_settings": {"default_mandate": None, "payment_method_options": None,
                             "payment_method_types": None},
        "period_end": created, "period_start": created - 30 * 86400,
        "status": "paid" if paid else "open",
        "status_transitions": {"finalized_at": created - 50, "marked_uncollectible_at": None,
                               "paid_at": created if paid else None, "voided_at": None},
        "subtotal": amount, "total": amount, "total_discount_amounts": [], "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def payment_method(customer_id: str, created: int) -> dict:
    return {
        "id": f"pm_{customer_id[4:]}", "object": "payment_method", "allow_redisplay": "unspecified",
        "billing_details": {"address": None, "email": None, "name": "Example Owner", "phone": None},
        "card": {"brand": "visa", "checks": {"cvc_check": "pass"}, "country": "US", "exp_month": 12,
                 "exp_year": 2030, "fingerprint": "Xt5EWLLDS7FJjR1c", "funding": "credit",
                 "last4": "4242", "networks": {"available": ["visa"], "preferred": None}},
        "created": created, "customer": customer_id, "livemode": False, "metadata": {}, "type": "card",
    }


class EventFactory:
    """Unique events for one run; ids carry the run tag so reruns never collide.

    Bodies are signed by the load process right before they are posted (Stripe's tolerance is
    five minutes, and the signature is part of what the webhook costs)."""

    def __init__(self, run_tag: str, seed: int = 8):
        self.tag = run_tag
        self.rng = random.Random(seed)
        self.counter = 0

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_b{self.tag}{self.counter:08d}"

    @staticmethod
    def body_of(event: dict) -> str:
        return json.dumps(event, separators=(",", ":"))

    def customer_created(self, customer_id: str) -> Planned:
        now = int(time.time())
        event_id = self._next("evt")
        body = self.body_of(_envelope(event_id, "customer.created", customer(customer_id, now - 86400), now))
        return Planned(event_id, "customer.created", None, body, customer_id)

    def payment_failed(self, customer_id: str) -> Planned:
        now = int(time.time())
        invoice_id, event_id = self._next("in"), self._next("evt")
        sub_id = f"sub_{customer_id[4:]}"
        body = self.body_of(_envelope(event_id, "invoice.payment_failed",
                                     invoice(invoice_id, customer_id, sub_id, now, paid=False), now))
        return Planned(event_id, "invoice.payment_failed", invoice_id, body, customer_id)

    def paid(self, customer_id: str, invoice_id: str) -> Planned:
        now = int(time.time()) + 1  # newer than the failure it settles
        event_id = self._next("evt")
        sub_id = f"sub_{customer_id[4:]}"
        body = self.body_of(_envelope(event_id, "invoice.paid",
                                     invoice(invoice_id, customer_id, sub_id, now, paid=True), now))
        return Planned(event_id, "invoice.paid", invoice_id, body, customer_id)

    def customer_updated(self, customer_id: str) -> Planned:
        now = int(time.time()) + 1
        event_id = self._next("evt")
        obj = customer(customer_id, now - 86400)
        obj["name"] = "Example Owner (renamed)"
        body = self.body_of(_envelope(event_id, "customer.updated", obj, now,
                                     previous_attributes={"name": "Example Owner"}))
        return Planned(event_id, "customer.updated", None, body, customer_id)

    def card_attached(self, customer_id: str) -> Planned:
        now = int(time.time()) + 1
        event_id = self._next("evt")
        body = self.body_of(_envelope(event_id, "payment_method.attached", payment_method(customer_id, now), now))
        return Planned(event_id, "payment_method.attached", None, body, customer_id)

    def new_customer_id(self) -> str:
        return self._next("cus")

    def mix(self, count: int, customers: list[str], settle: list[tuple[str, str]]) -> list[Planned]:
        """`count` events in the realistic mix.

        A paid event settles an invoice from `settle` (failures posted and mailed before the timed
        batch, popped so each is paid once): settling one from the same batch would race its own
        failure, and whether its first email goes out would depend on worker scheduling. With
        `settle` empty, a paid slot becomes a failure."""
        planned: list[Planned] = []
        types = [t for t, _ in MIX]
        weights = [w for _, w in MIX]
        for i in range(count):
            kind = self.rng.choices(types, weights)[0]
            cust = customers[i % len(customers)]
            if kind == "invoice.paid" and settle:
                paid_customer, invoice_id = settle.pop()
                item = self.paid(paid_customer, invoice_id)
            elif kind in ("invoice.payment_failed", "invoice.paid"):
                item = self.payment_failed(cust)
            elif kind == "customer.updated":
                item = self.customer_updated(cust)
            else:
                item = self.card_attached(cust)
            planned.append(item)
        return planned


def ingest_template(run_tag: str) -> str:
    """A payment_failed body whose ids the load process fills per request (EVT_ID, INV_ID).

    Every request is a new event: a new row, a new message (what a webhook burst costs)."""
    now = int(time.time())
    event = _envelope("evt_" + EVT_MARK, "invoice.payment_failed",
                      invoice("in_" + INV_MARK, f"cus_t{run_tag}", f"sub_t{run_tag}", now, paid=False), now)
    return json.dumps(event, separators=(",", ":"))


EVT_MARK = "EVTIDXXXXXXXXXXXXXXXXXXXX"  # replaced with a unique id by bench.loadgen
INV_MARK = "INVIDXXXXXXXXXXXXXXXXXXXX"
