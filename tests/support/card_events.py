"""Card events built from real Stripe payloads (../shared/stripe-data), with our ids, brands and expiries.

Each builder loads Stripe's own object for the event type and replaces only what the test is
about: ids, the customer, the brand, last four, expiry and fingerprint.
"""

from __future__ import annotations

import copy

from tests.support.dunning import T0
from tests.support.helpers import load_stripe_file, make_event

_count = [0]


def _load(rel: str) -> dict:
    data = load_stripe_file(rel)
    return copy.deepcopy(data)


def _event(event_type: str, obj: dict, created: int, event_id: str | None, previous: dict | None = None,
           api_version: str = "2020-08-27") -> dict:
    _count[0] += 1
    return make_event(event_type, obj, event_id=event_id or f"evt_card{_count[0]:06d}", created=created,
                      previous_attributes=previous, api_version=api_version)


def _card(obj_card: dict, brand: str, last4: str, exp: tuple[int, int], fingerprint: str) -> None:
    obj_card.update(brand=brand, last4=last4, exp_month=exp[0], exp_year=exp[1], fingerprint=fingerprint)


def pm_attached(pm_id: str, customer: str, *, brand="visa", last4="4242", exp=(12, 2030),
                fingerprint=None, created=T0 + 100, event_id=None) -> dict:
    """payment_method.attached (stripe-ruby-mock, API 2020-08-27)."""
    pm = _load("events/stripe-ruby-mock/payment_method.attached.json")["data"]["object"]
    pm.update(id=pm_id, customer=customer)
    pm["billing_details"]["name"] = "Ada Secret-Name"
    _card(pm["card"], brand, last4, exp, fingerprint or f"fp_{pm_id}")
    return _event("payment_method.attached", pm, created, event_id)


def pm_updated(pm_id: str, customer: str, *, event_type="payment_method.updated", brand="visa", last4="4242",
               exp=(12, 2030), fingerprint=None, previous_card: dict | None = None, created=T0 + 200,
               event_id=None) -> dict:
    """payment_method.updated / .automatically_updated (pay-rails/pay, supabase)."""
    rel = ("events/supabase-stripe-sync-engine/payment_method_automatically_updated.json"
           if event_type == "payment_method.automatically_updated" else "events/pay/payment_method.updated.json")
    data = _load(rel)
    data = data.get("data", data)
    pm = data["object"]
    pm.update(id=pm_id, customer=customer)
    _card(pm["card"], brand, last4, exp, fingerprint or f"fp_{pm_id}")
    previous = {"card": previous_card} if previous_card is not None else {"billing_details": {"name": None}}
    return _event(event_type, pm, created, event_id, previous)


def customer_updated(customer: str, *, default_pm: str | None, previous_default: str | None,
                     email="owner@example.com", created=T0 + 150, event_id=None, change=True) -> dict:
    """customer.updated with previous_attributes (zulip's recorded Stripe test-mode event)."""
    listing = _load("events/zulip/replace_payment_method--Event.list.1.json")
    evt = listing["data"][0]
    obj = evt["data"]["object"]
    obj.update(id=customer, email=email, metadata={})
    obj["invoice_settings"]["default_payment_method"] = default_pm
    previous = ({"invoice_settings": {"default_payment_method": previous_default}} if change
                else {"name": "Old name"})
    return _event("customer.updated", obj, created, event_id, previous)


def setup_intent_succeeded(pm_id: str, customer: str, *, created=T0 + 120, event_id=None) -> dict:
    """setup_intent.succeeded (supabase stripe-sync-engine): payment_method is only an id."""
    obj = _load("events/supabase-stripe-sync-engine/setup_intent_succeeded.json")["data"]["object"]
    obj.update(customer=customer, payment_method=pm_id, id=f"seti_{pm_id}")
    return _event("setup_intent.succeeded", obj, created, event_id)


def source_created(card_id: str, customer: str, *, brand="Visa", last4="4242", exp=(3, 2031), fingerprint=None,
                   created=T0 + 100, event_id=None, event_type="customer.source.created") -> dict:
    """customer.source.created (stripe-ruby-mock: a legacy Card)."""
    card = _load("events/stripe-ruby-mock/customer.source.created.json")["data"]["object"]
    card.update(id=card_id, customer=customer, name="Ada Secret-Name", address_line1="1 Secret Road")
    _card(card, brand, last4, exp, fingerprint or f"fp_{card_id}")
    return _event(event_type, card, created, event_id)


def source_expiring(card_id: str, customer: str, *, exp, brand="Visa", last4="4242", fingerprint=None,
                    created=T0 + 300, event_id=None) -> dict:
    """customer.source.expiring (mozilla-subhub: a legacy Card)."""
    card = _load("events/mozilla-subhub/stripe_source_expiring_event.json")["data"]["object"]
    card.update(id=card_id, customer=customer)
    _card(card, brand, last4, exp, fingerprint or f"fp_{card_id}")
    return _event("customer.source.expiring", card, created, event_id, api_version="2018-02-06")


def subscription(subscription_id: str, customer: str, status: str = "active", created=T0 - 1000) -> dict:
    obj = {"id": subscription_id, "object": "subscription", "customer": customer, "status": status,
           "metadata": {}}
    return _event("customer.subscription.created", obj, created, None)


def customer_created(customer: str, email: str = "owner@example.com", metadata=None, created=T0 - 2000) -> dict:
    obj = {"id": customer, "object": "customer", "email": email, "name": "Ada", "metadata": metadata or {},
           "invoice_settings": {"default_payment_method": None}, "default_source": None}
    return _event("customer.created", obj, created, None)
