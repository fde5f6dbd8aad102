"""The immediate card retry against localstripe (a stateful fake Stripe server), for the calls it supports.

localstripe runs in a subprocess bound to 127.0.0.1 on a free port, from a temporary working
directory and HOME. It hard-codes /tmp/localstripe.pickle as its persistence file; the
subprocess turns that persistence off (it is only used to survive restarts) so parallel runs
cannot clobber each other, and the store is reset with DELETE /_config/data before use.
localstripe ignores idempotency keys and has no `payment_method` parameter on /pay: the worker
only names the card when Stripe's own choice would be another one, so against localstripe
(no subscription-level default) the request stays minimal.

Events: localstripe never emits payment_method.attached and its webhooks are fire-and-forget,
so each event is built from the object localstripe returns and posted, signed, to our webhook.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
import requests
import stripe

from tests.support.dunning import T0, case_of
from tests.support.helpers import drain, make_event, post_event, rows
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

API_KEY = "sk_test_localstripe_suite"
SERVER = """
import sys
from aiohttp import web
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None  # no shared /tmp/localstripe.pickle
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@pytest.fixture
def localstripe_url(tmp_path):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}
    log = open(tmp_path / "localstripe.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.delete(f"{url}/_config/data", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "localstripe.log").read_text()[-2000:])
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def card(client, number: str) -> str:
    return client.v1.payment_methods.create({"type": "card", "card": {
        "number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}}).id


def failed_invoice_at_localstripe(client) -> tuple[str, str, str]:
    """A customer whose renewal invoice failed at localstripe: (customer, invoice, old card)."""
    customer = client.v1.customers.create({"email": "owner@example.com", "name": "Ada"}).id
    good = card(client, "4242424242424242")
    client.v1.payment_methods.attach(good, {"customer": customer})
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": good}})
    product = client.v1.products.create({"name": "Hosting"}).id
    plan = client.v1.plans.create({"product": product, "amount": 12000, "currency": "usd", "interval": "month"}).id
    client.v1.subscriptions.create({"customer": customer, "items": [{"plan": plan}]})
    old = card(client, "4000000000000341")  # declined when charged
    client.v1.payment_methods.attach(old, {"customer": customer})
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": old}})
    subscription = client.v1.subscriptions.list({"customer": customer}).data[0].id
    invoice = client.v1.invoices.create({"customer": customer, "subscription": subscription}).id
    paid = client.v1.invoices.pay(invoice)
    assert paid.status == "open"  # the renewal failed
    return customer, invoice, old


def as_event(event_type: str, obj, event_id: str, created: int, previous=None) -> dict:
    return make_event(event_type, obj.to_dict() if hasattr(obj, "to_dict") else obj, event_id=event_id,
                      created=created, previous_attributes=previous)


def new_default_card(client, customer: str, old: str, number: str, created: int) -> list[dict]:
    """The owner saves a new card and makes it the default: the events Stripe sends for it."""
    new = card(client, number)
    client.v1.payment_methods.attach(new, {"customer": customer})
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": new}})
    return [
        as_event("payment_method.attached", client.v1.payment_methods.retrieve(new), f"evt_att_{new}", created),
        as_event("customer.updated", client.v1.customers.retrieve(customer), f"evt_cus_{new}", created + 1,
                 {"invoice_settings": {"default_payment_method": old}}),
    ]


def scenario(make_runtime, url, number: str):
    from worker.web.app import create_app
    import falcon.testing
    runtime = make_runtime(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=url)
    client = stripe.StripeClient(API_KEY, base_addresses={"api": url}, max_network_retries=0)
    customer, invoice, old = failed_invoice_at_localstripe(client)
    web = falcon.testing.TestClient(create_app(runtime))
    failed = as_event("invoice.payment_failed", client.v1.invoices.retrieve(invoice), f"evt_fail_{invoice}", T0)
    assert post_event(web, failed).status_code == 200
    drain(runtime)
    assert case_of(runtime, invoice)["state"] == "failing"
    events = new_default_card(client, customer, old, number, T0 + 86400) * 3
    random.Random(7).shuffle(events)
    for evt in events:
        assert post_event(web, evt).status_code == 200
    drain(runtime)
    return runtime, client, invoice


def test_a_new_default_card_that_localstripe_declines_gets_one_card_declined_again_email(
        make_runtime, localstripe_url):
    runtime, client, invoice = scenario(make_runtime, localstripe_url, "4000000000000341")
    (retry,) = rows(runtime, "card_retries")
    assert (retry["invoice_id"], retry["status"], retry["decline_code"]) == (invoice, "declined", "card_declined")
    case = case_of(runtime, invoice)
    assert case["state"] == "failing" and case["last_failure_code"] == "card_declined"
    (email,) = rows(runtime, "emails", template="card-declined-again")
    assert email["recipient"] == "owner@example.com"
    assert "Visa ending in 0341" in email["subject"] + email["body_text"]
    assert client.v1.invoices.retrieve(invoice).status == "open"


def test_a_new_default_card_that_localstripe_accepts_pays_the_failed_invoice_itself(make_runtime, localstripe_url):
    runtime, client, invoice = scenario(make_runtime, localstripe_url, "4242424242424242")
    (retry,) = rows(runtime, "card_retries")
    assert retry["status"] == "succeeded"
    assert client.v1.invoices.retrieve(invoice).status == "paid"
    assert rows(runtime, "emails", template="card-declined-again") == []


def test_a_new_default_card_that_needs_3d_secure_sends_no_card_declined_again_email(make_runtime, localstripe_url):
    runtime, client, invoice = scenario(make_runtime, localstripe_url, "4000002500003155")
    (retry,) = rows(runtime, "card_retries")
    assert (retry["status"], retry["decline_code"]) == ("declined", "requires_action")
    # the owner is asked to confirm by the action-required email (invoice.payment_action_required)
    assert rows(runtime, "emails", template="card-declined-again") == []
    assert case_of(runtime, invoice)["state"] == "failing"
