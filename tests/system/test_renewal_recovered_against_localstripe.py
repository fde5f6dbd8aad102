"""End to end with a Stripe-like peer: localstripe drives a real failed renewal through the service.

localstripe (bound to 127.0.0.1, run in a temporary folder) is this service's Stripe: the test
creates a customer, a card and a subscription there, makes the renewal fail with a 3-D Secure
card whose authentication fails (localstripe then emits `invoice.payment_failed` to our
webhook), moves time with `dunning tick --at` for the reminder, updates the card (the service
retries the invoice at once through STRIPE_API_BASE = localstripe), and localstripe's
`invoice.payment_succeeded` recovers the case. What localstripe cannot emit
(`payment_method.attached`, `invoice.paid`) is posted signed, in the shapes of
../shared/stripe-data. Emails are counted at a SendGrid fake.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.support.fake_receivers import FakeSendGrid
from tests.support.helpers import STRIPE_DATA, WEBHOOK_SECRET
from tests.support.processes import Proc, build_service, free_port, kill_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DECLINE_3DS = "4000008400001629"   # localstripe: requires 3-D Secure, then declines
GOOD_CARD = "4242424242424242"


@pytest.fixture
def localstripe(tmp_path_factory):
    pytest.importorskip("localstripe")
    port = free_port()
    cwd = Path(tempfile.mkdtemp(prefix="localstripe-"))
    log_path = cwd / "localstripe.log"
    code = ("from aiohttp import web; from localstripe.server import app; "
            f"web.run_app(app, host='127.0.0.1', port={port}, print=None)")
    with open(log_path, "ab") as log:
        popen = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    proc = Proc("localstripe", [code], popen, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                # It always writes /tmp/localstripe.pickle: start from nothing whatever is there.
                if requests.delete(f"{url}/_config/data", timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                pytest.skip(f"localstripe did not start: {proc.log()[-500:]}")
            time.sleep(0.2)
        yield url
    finally:
        kill_group(proc)
        shutil.rmtree(cwd, ignore_errors=True)


def stripe_client(url: str):
    import stripe
    return stripe.StripeClient("sk_test_e2e_localstripe", base_addresses={"api": url}, max_network_retries=0)


def card(client, number: str, exp_year: int = 2031):
    return client.v1.payment_methods.create({"type": "card", "card": {
        "number": number, "exp_month": 12, "exp_year": exp_year, "cvc": "123"}})


def shaped_like(relative: str, event_id: str, created: int, **object_changes) -> dict:
    """An event in the exact shape of a stored real payload, with our ids."""
    path = STRIPE_DATA / relative
    if not path.is_file():
        pytest.skip("../shared/stripe-data is absent")
    event = json.loads(path.read_text())
    event["id"], event["created"] = event_id, created
    obj = event["data"]["object"]
    for key, value in object_changes.items():
        if isinstance(value, dict) and isinstance(obj.get(key), dict):
            obj[key] = {**obj[key], **value}
        else:
            obj[key] = value
    event["data"].pop("previous_attributes", None)
    return event


def at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_renewal_declined_by_3ds_is_reminded_retried_after_a_card_update_and_recovered(tmp_path, localstripe):
    sendgrid = FakeSendGrid().start()
    svc = build_service(tmp_path, db="postgres", broker="redis",
                        STRIPE_API_KEY="sk_test_e2e_localstripe", STRIPE_API_BASE=localstripe,
                        SENDGRID_API_KEY=sendgrid.api_key, SENDGRID_API_HOST=sendgrid.url)
    try:
        web = svc.start_web()
        worker = svc.start_worker(processes=1, threads=4)
        scheduler = svc.start_scheduler()
        watch = [web, worker, scheduler]
        hook = requests.post(f"{localstripe}/_config/webhooks/dunning",
                             data={"url": f"{svc.base_url}/webhooks/stripe", "secret": WEBHOOK_SECRET}, timeout=10)
        assert hook.status_code < 300, hook.text

        # A customer with a working card and a monthly subscription (first invoice paid).
        stripe = stripe_client(localstripe)
        customer = stripe.v1.customers.create({"email": "owner@e2e.example.com", "name": "E2E Owner"})
        good = card(stripe, GOOD_CARD)
        stripe.v1.payment_methods.attach(good.id, {"customer": customer.id})
        stripe.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": good.id}})
        product = stripe.v1.products.create({"name": "Pro"})
        plan = stripe.v1.plans.create({"product": product.id, "amount": 2500, "currency": "eur",
                                       "interval": "month"})
        subscription = stripe.v1.subscriptions.create({"customer": customer.id, "items": [{"plan": plan.id}]})
        assert subscription.status == "active"

        # The renewal is charged to a card whose 3-D Secure authentication fails.
        declining = card(stripe, DECLINE_3DS)
        stripe.v1.payment_methods.attach(declining.id, {"customer": customer.id})
        stripe.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": declining.id}})
        stripe.v1.invoice_items.create({"customer": customer.id, "amount": 2500, "currency": "eur",
                                        "subscription": subscription.id})
        renewal = stripe.v1.invoices.create({"customer": customer.id, "subscription": subscription.id})
        stripe.v1.invoices.pay(renewal.id)
        intent = stripe.v1.payment_intents.retrieve(stripe.v1.invoices.retrieve(renewal.id).payment_intent)
        assert intent.status == "requires_action"
        auth = requests.post(f"{localstripe}/v1/payment_intents/{intent.id}/_authenticate",
                             data={"client_secret": intent.client_secret, "success": "false"},
                             auth=("sk_test_e2e_localstripe", ""), timeout=10)
        assert auth.status_code < 500
        assert stripe.v1.subscriptions.retrieve(subscription.id).status == "past_due"

        # localstripe's invoice.payment_failed reaches the webhook: a case, one payment-failed email.
        case = svc.wait_for(lambda: svc.query("SELECT * FROM cases WHERE invoice_id = :i", i=renewal.id),
                            timeout=60, message="the case of the failed renewal", watch=watch)[0]
        assert case["state"] == "failing" and case["customer_id"] == customer.id
        svc.wait_for(lambda: sendgrid.by_template().get("payment-failed") == 1, timeout=60,
                     message="the payment-failed email", watch=watch)

        # Day 3: the reminder, once (a second tick at the same instant adds nothing).
        day3 = case["first_failed_at"] + timedelta(days=3, hours=1)
        svc.tick(at(day3))
        svc.wait_for(lambda: sendgrid.by_template().get("reminder") == 1, timeout=60,
                     message="the day-3 reminder", watch=watch)
        svc.tick(at(day3))
        time.sleep(2)
        assert sendgrid.by_template().get("reminder") == 1

        # The owner adds a working card and makes it the default: localstripe emits customer.updated;
        # payment_method.attached (which it cannot emit) is posted in Stripe's own shape.
        new_card = card(stripe, GOOD_CARD, exp_year=2032)
        stripe.v1.payment_methods.attach(new_card.id, {"customer": customer.id})
        stripe.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": new_card.id}})
        # localstripe's customer.updated carries no previous_attributes (Stripe's does), so it only
        # records the new default; the attach, delivered after it (Stripe's order is not fixed),
        # is what finds the card is now the default of a customer in dunning.
        svc.wait_for(lambda: svc.scalar("SELECT default_payment_method FROM customers WHERE id = :c",
                                        c=customer.id) == new_card.id,
                     timeout=60, message="localstripe's customer.updated with the new default", watch=watch)
        attached = shaped_like("events/supabase-stripe-sync-engine/payment_method_attached.json",
                               "evt_e2e_pm_attached", int(time.time()), id=new_card.id, customer=customer.id,
                               card={"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2032,
                                     "fingerprint": "e2eFingerprint"})
        assert svc.post_event(attached).status_code == 200

        # The immediate retry charges the new card through localstripe; its invoice.payment_succeeded
        # recovers the case and thanks the owner.
        retry = svc.wait_for(lambda: svc.query("SELECT * FROM card_retries WHERE status <> 'pending'"),
                             timeout=90, message="the immediate retry", watch=watch)
        assert [r["status"] for r in retry] == ["succeeded"] and retry[0]["payment_method_id"] == new_card.id
        assert stripe.v1.invoices.retrieve(renewal.id).status == "paid"
        svc.wait_for(lambda: svc.scalar("SELECT state FROM cases WHERE invoice_id = :i", i=renewal.id) == "recovered",
                     timeout=60, message="the case recovered", watch=watch)
        svc.wait_for(lambda: sendgrid.by_template().get("payment-received") == 1, timeout=60,
                     message="the payment-received email", watch=watch)

        # invoice.paid (never emitted by localstripe) arrives too, in a real payload's shape: nothing new.
        paid = shaped_like("events/stripe-ruby-mock/invoice.paid.json", "evt_e2e_invoice_paid", int(time.time()),
                           id=renewal.id, customer=customer.id, subscription=subscription.id, status="paid",
                           amount_paid=5000, amount_remaining=0, customer_email="owner@e2e.example.com")
        assert svc.post_event(paid).status_code == 200
        svc.wait_for(lambda: svc.scalar("SELECT status FROM events WHERE id = 'evt_e2e_invoice_paid'")
                     in ("processed", "ignored"), timeout=60, message="invoice.paid handled", watch=watch)
        later = case["first_failed_at"] + timedelta(days=20)
        svc.tick(at(later))  # past every step: a recovered case sends nothing more
        time.sleep(3)

        templates = sendgrid.by_template()
        received = svc.query("SELECT type, status FROM events ORDER BY received_at")
        print(f"\nlocalstripe e2e: {len(received)} events "
              f"({sorted({r['type'] for r in received})}); emails {templates}")
        assert templates["payment-failed"] == 1 and templates["reminder"] == 1
        assert templates["payment-received"] == 1
        assert sendgrid.duplicates() == {}
        assert all(n == 1 for n in templates.values()), templates
        assert {"disruption-warning", "final-notice", "service-disrupted"}.isdisjoint(templates)
        assert {r["status"] for r in received} <= {"processed", "ignored"}
        assert {"invoice.payment_failed", "invoice.payment_succeeded", "customer.updated"} <= {r["type"] for r in received}
        recipients = {m["personalizations"][0]["to"][0]["email"] for m in sendgrid.messages}
        assert recipients == {"owner@e2e.example.com"}
    finally:
        svc.close()
        sendgrid.stop()
