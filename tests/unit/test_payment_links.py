"""Payment links on request: POST /payment-links and `dunning payment-link`, against the strict fake Stripe."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import update

from tests.support import card_events as fc
from tests.support.fake_stripe import API_KEY
from tests.support.dunning import case_of, deliver, failed, open_case
from tests.support.helpers import admin_client, bearer, drain, rows
from worker.pure.clock import utcnow
from worker.stripe.payment_links import create_link

HOSTED = "https://invoice.stripe.com/i/acct_test/test_"


def ask(client, body, headers=None):
    return client.simulate_post("/payment-links", body=json.dumps(body) if not isinstance(body, str) else body,
                                headers=headers if headers is not None else bearer())


def link_emails(runtime):
    return rows(runtime, "emails", template="payment-link")


def invoice_updates(fake, invoice_id):
    return [r for r in fake.posts(f"/v1/invoices/{invoice_id}") if not r.replayed]


# -- the methods offered --------------------------------------------------------------------
def test_a_usd_120_invoice_is_offered_card_only_and_the_owner_gets_the_invoice_page(stripe_runtime, fake_stripe):
    open_case(stripe_runtime, fake_stripe, "in_small", amount=12000)
    answer = ask(admin_client(stripe_runtime), {"invoice": "in_small", "requested_by": "support agent 7",
                                                "note": "customer cannot upload a card"})
    assert answer.status_code == 202, answer.text
    request_id = answer.json["id"]
    drain(stripe_runtime)

    (update_call,) = invoice_updates(fake_stripe, "in_small")
    assert update_call.params == {"payment_settings": {"payment_method_types": ["card"]}}
    assert update_call.idempotency_key == f"dunning-payment-link:{request_id}"
    (link,) = rows(stripe_runtime, "payment_links")
    assert (link["id"], link["status"], link["url"]) == (request_id, "created", HOSTED + "in_small")
    assert json.loads(link["methods"]) == ["card"]
    assert (link["requested_by"], link["note"]) == ("support agent 7", "customer cannot upload a card")
    expected_expiry = utcnow() + timedelta(hours=72)
    assert abs((link["expires_at"] - expected_expiry).total_seconds()) < 120
    (email,) = link_emails(stripe_runtime)
    assert email["recipient"] == "owner@example.com"
    assert HOSTED + "in_small" in email["body_text"]
    assert "You can pay by: Card." in email["body_text"]
    # the invoice's own page has no expiry of ours: the email claims none (issue 14)
    assert "expires" not in email["body_text"] and "invoice's own payment page" in email["body_text"]
    assert email["invoice_id"] == "in_small"


def test_a_usd_5000_invoice_is_offered_card_ach_debit_and_bank_transfer(stripe_runtime, fake_stripe):
    open_case(stripe_runtime, fake_stripe, "in_large", amount=500000)
    assert ask(admin_client(stripe_runtime), {"invoice": "in_large"}).status_code == 202
    drain(stripe_runtime)

    (update_call,) = invoice_updates(fake_stripe, "in_large")
    assert update_call.params == {"payment_settings": {
        "payment_method_types": ["card", "us_bank_account", "customer_balance"],
        "payment_method_options": {"customer_balance": {
            "funding_type": "bank_transfer", "bank_transfer": {"type": "us_bank_transfer"}}}}}
    (link,) = rows(stripe_runtime, "payment_links")
    assert json.loads(link["methods"]) == ["card", "us_bank_account", "customer_balance"]
    assert fake_stripe.invoices["in_large"]["payment_settings"]["payment_method_types"] == [
        "card", "us_bank_account", "customer_balance"]
    (email,) = link_emails(stripe_runtime)
    assert "Card, ACH Direct Debit (US bank account), Bank transfer (wire)" in email["body_text"]


def test_a_currency_without_a_configured_minimum_is_offered_card_only(sqlite_stripe_runtime, fake_stripe):
    open_case(sqlite_stripe_runtime, fake_stripe, "in_eur", amount=900000, currency="eur")
    assert ask(admin_client(sqlite_stripe_runtime), {"invoice": "in_eur"}).status_code == 202
    drain(sqlite_stripe_runtime)
    (update_call,) = invoice_updates(fake_stripe, "in_eur")
    assert update_call.params["payment_settings"]["payment_method_types"] == ["card"]


# -- once, whatever is retried --------------------------------------------------------------
def test_the_same_request_retried_creates_one_link_and_one_email(stripe_runtime, fake_stripe):
    open_case(stripe_runtime, fake_stripe, "in_retry", amount=12000)
    # The first answer from Stripe is lost on the way back: the client retries with the same key.
    fake_stripe.sever_next.append("invoices.update")
    request_id = ask(admin_client(stripe_runtime), {"invoice": "in_retry"}).json["id"]
    drain(stripe_runtime)
    # ...and the job itself runs again (a redelivered message, an operator's replay).
    stripe_runtime.actors.create_payment_link.send(request_id)
    drain(stripe_runtime)
    assert create_link(stripe_runtime, request_id) == "created"

    posts = fake_stripe.posts("/v1/invoices/in_retry")
    assert len(posts) == 2 and posts[1].replayed and posts[0].idempotency_key == posts[1].idempotency_key
    assert fake_stripe.applied.count(("invoices.update", "in_retry")) == 1
    assert len(rows(stripe_runtime, "payment_links")) == 1
    assert len(link_emails(stripe_runtime)) == 1


def test_a_crash_after_stripe_answered_is_repaired_by_the_retried_job_without_a_second_link(
        sqlite_stripe_runtime, fake_stripe):
    runtime = sqlite_stripe_runtime
    open_case(runtime, fake_stripe, "in_crash", amount=12000)
    request_id = ask(admin_client(runtime), {"invoice": "in_crash"}).json["id"]
    # The worker called Stripe then died before its commit: simulate by running the Stripe call
    # with the job's key first, the job then runs from scratch.
    from worker.stripe.gateway import gateway
    gateway(runtime).offer_payment_methods("in_crash", ["card"], "usd", f"dunning-payment-link:{request_id}")
    drain(runtime)
    assert fake_stripe.applied.count(("invoices.update", "in_crash")) == 1
    assert rows(runtime, "payment_links")[0]["status"] == "created"
    assert len(link_emails(runtime)) == 1


def test_an_idempotency_key_header_makes_a_retried_http_request_the_same_request(sqlite_stripe_runtime, fake_stripe):
    open_case(sqlite_stripe_runtime, fake_stripe, "in_idem")
    client = admin_client(sqlite_stripe_runtime)
    headers = {**bearer(), "Idempotency-Key": "support-ticket-4711"}
    first = ask(client, {"invoice": "in_idem"}, headers)
    second = ask(client, {"invoice": "in_idem"}, headers)
    assert first.status_code == second.status_code == 202
    assert first.json["id"] == second.json["id"]
    drain(sqlite_stripe_runtime)
    assert len(rows(sqlite_stripe_runtime, "payment_links")) == 1
    assert len(link_emails(sqlite_stripe_runtime)) == 1


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"invoice": "in_victim", "email": "attacker@example.com"},
    {"invoice": "in_victim", "to": "someone"},
    {"invoice": "in_victim", "cc": ["x"], "bcc": None},
    {"invoice": "in_victim", "note": "please send it to attacker@example.com instead"},
    {"invoice": "in_victim", "requested_by": "attacker@example.com"},
    {"invoice": "in_victim", "Recipient": "owner"},
], ids=["email", "to", "cc-bcc", "address-in-note", "address-in-requested-by", "recipient-any-case"])
def test_a_request_naming_any_recipient_address_is_refused_and_nothing_is_stored_or_sent(
        sqlite_stripe_runtime, fake_stripe, body):
    open_case(sqlite_stripe_runtime, fake_stripe, "in_victim")
    answer = ask(admin_client(sqlite_stripe_runtime), body)
    assert answer.status_code == 400
    assert "owner of record" in answer.json["error"] and "nothing was stored or sent" in answer.json["error"]
    drain(sqlite_stripe_runtime)
    assert rows(sqlite_stripe_runtime, "payment_links") == []
    assert [r for r in fake_stripe.requests if not r.path.startswith("/v1/customers/")] == []  # prefetch reads
    assert link_emails(sqlite_stripe_runtime) == []
    assert all(e["recipient"] == "owner@example.com" for e in rows(sqlite_stripe_runtime, "emails"))


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/json"},
    {"Authorization": "Bearer not-the-token", "Content-Type": "application/json"},
    {"Authorization": "Basic dXNlcjp3cm9uZw==", "Content-Type": "application/json"},
    {"Authorization": "test-admin-token-0123456789", "Content-Type": "application/json"},
], ids=["no-header", "wrong-bearer", "wrong-basic", "no-scheme"])
def test_without_the_admin_token_the_answer_is_401_and_nothing_happens(sqlite_stripe_runtime, fake_stripe, headers):
    open_case(sqlite_stripe_runtime, fake_stripe, "in_guarded")
    answer = ask(admin_client(sqlite_stripe_runtime), {"invoice": "in_guarded"}, headers)
    assert answer.status_code == 401
    assert rows(sqlite_stripe_runtime, "payment_links") == []


def test_unknown_paid_and_malformed_requests_are_refused_with_400(sqlite_stripe_runtime, fake_stripe):
    runtime = sqlite_stripe_runtime
    open_case(runtime, fake_stripe, "in_open")
    open_case(runtime, fake_stripe, "in_paid", customer="cus_paid")
    invoices = runtime.db.table("invoices")
    with runtime.db.transaction() as conn:
        conn.execute(update(invoices).where(invoices.c.id == "in_paid").values(status="paid"))
    client = admin_client(runtime)
    cases = {
        "unknown invoice in_nope": {"invoice": "in_nope"},
        "already paid": {"invoice": "in_paid"},
        "unknown customer": {"customer": "cus_nope"},
        "exactly one": {"invoice": "in_open", "customer": "cus_owner"},
        "must be a Stripe invoice id": {"invoice": "../etc/passwd"},
        "unknown field": {"invoice": "in_open", "amount": 1},
        "JSON object": ["in_open"],
        "not valid JSON": "{invoice: in_open",
        "'note' must be a string": {"invoice": "in_open", "note": 5},
        "one line": {"invoice": "in_open", "requested_by": "a\r\nBcc: x"},
    }
    for expected, body in cases.items():
        answer = ask(client, body)
        assert answer.status_code == 400, (expected, answer.text)
        assert expected in answer.json["error"], (expected, answer.json)
    assert rows(runtime, "payment_links") == []


def test_a_body_over_the_size_limit_is_refused(sqlite_stripe_runtime, fake_stripe):
    answer = ask(admin_client(sqlite_stripe_runtime), {"invoice": "in_x", "note": "n" * 20000})
    assert answer.status_code == 413


def test_more_than_the_daily_limit_per_invoice_is_answered_429(stripe_runtime, fake_stripe):
    open_case(stripe_runtime, fake_stripe, "in_busy")
    client = admin_client(stripe_runtime)
    limit = stripe_runtime.policy.payment_links.daily_limit_per_invoice
    assert [ask(client, {"invoice": "in_busy"}).status_code for _ in range(limit)] == [202] * limit
    refused = ask(client, {"invoice": "in_busy"})
    assert refused.status_code == 429 and "limit" in refused.json["error"]
    assert 0 < int(refused.headers["Retry-After"]) <= 24 * 3600 + 1
    assert len(rows(stripe_runtime, "payment_links")) == limit
    # a day later the invoice may be asked again
    links = stripe_runtime.db.table("payment_links")
    with stripe_runtime.db.transaction() as conn:
        conn.execute(update(links).values(requested_at=utcnow() - timedelta(hours=25)))
    assert ask(client, {"invoice": "in_busy"}).status_code == 202


def test_a_customer_request_links_every_unpaid_invoice_in_dunning(stripe_runtime, fake_stripe):
    open_case(stripe_runtime, fake_stripe, "in_first", amount=12000)
    open_case(stripe_runtime, fake_stripe, "in_second", amount=500000)
    answer = ask(admin_client(stripe_runtime), {"customer": "cus_owner"})
    assert answer.status_code == 202
    assert sorted(r["invoice"] for r in answer.json["requests"]) == ["in_first", "in_second"]
    drain(stripe_runtime)
    assert {r["invoice_id"]: r["status"] for r in rows(stripe_runtime, "payment_links")} == {
        "in_first": "created", "in_second": "created"}
    assert len(link_emails(stripe_runtime)) == 2


def test_an_invoice_paid_at_stripe_meanwhile_gets_no_link_and_no_email(sqlite_stripe_runtime, fake_stripe):
    open_case(sqlite_stripe_runtime, fake_stripe, "in_meanwhile")
    assert ask(admin_client(sqlite_stripe_runtime), {"invoice": "in_meanwhile"}).status_code == 202
    fake_stripe.invoices["in_meanwhile"]["status"] = "paid"
    drain(sqlite_stripe_runtime)
    (link,) = rows(sqlite_stripe_runtime, "payment_links")
    assert link["status"] == "failed" and "paid" in link["last_error"]
    assert fake_stripe.posts() == []
    assert link_emails(sqlite_stripe_runtime) == []


# -- the command line -----------------------------------------------------------------------
def test_the_cli_asks_for_a_link_with_the_same_rules(sqlite_stripe_runtime, fake_stripe):
    from worker.cli import main
    open_case(sqlite_stripe_runtime, fake_stripe, "in_cli")
    runner = CliRunner()
    result = runner.invoke(main, ["payment-link", "in_cli", "--requested-by", "ops", "--note", "ticket 9",
                                  "--json"])
    assert result.exit_code == 0, result.output
    request_id = json.loads(result.output)["id"]
    drain(sqlite_stripe_runtime)
    (link,) = rows(sqlite_stripe_runtime, "payment_links", id=request_id)
    assert (link["status"], link["requested_by"], link["note"]) == ("created", "ops", "ticket 9")
    refused = runner.invoke(main, ["payment-link", "in_unknown"])
    assert refused.exit_code == 1 and "unknown invoice" in refused.output


# -- the fake is strict (a test that could not fail would prove nothing) ------------------------
def test_the_fake_stripe_rejects_undocumented_parameters_and_posts_without_a_key(fake_stripe):
    fake_stripe.add_invoice("in_strict", "cus_x", 100)
    client = stripe.StripeClient(API_KEY, base_addresses={"api": fake_stripe.base_url}, max_network_retries=0)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoices.update("in_strict", {"payment_settings": {"payment_method_typez": ["card"]}},
                                  {"idempotency_key": "k1"})
    assert raised.value.code == "parameter_unknown"
    assert "payment_settings[payment_method_typez]" in str(raised.value)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoices.update("in_strict", {"payment_settings": {"payment_method_types": ["wire"]}},
                                  {"idempotency_key": "k2"})
    assert raised.value.code == "parameter_invalid_string"
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("sk_test_wrong", base_addresses={"api": fake_stripe.base_url},
                            max_network_retries=0).v1.invoices.retrieve("in_strict")
    with pytest.raises(stripe.CardError):  # no card at all: declined
        client.v1.invoices.pay("in_strict", {}, {"idempotency_key": "k3"})
    with pytest.raises(stripe.IdempotencyError):  # same key, other parameters
        client.v1.invoices.pay("in_strict", {"payment_method": "pm_other"}, {"idempotency_key": "k3"})
    with pytest.raises(stripe.InvalidRequestError) as raised:  # amount is not a /pay parameter
        client.v1.invoices.pay("in_strict", {"amount": 5}, {"idempotency_key": "k4"})
    assert raised.value.code == "parameter_unknown"


# -- a payment link for a customer the policy excludes from dunning ----------------------------
def test_a_payment_link_for_an_invoice_of_a_customer_excluded_by_policy_is_refused_and_nothing_is_sent(
        stripe_runtime, fake_stripe):
    deliver(stripe_runtime, fc.customer_created("cus_owner", metadata={"dunning": "off"}))
    fake_stripe.add_invoice("in_excluded", "cus_owner", 12000, subscription="sub_owner")
    # Stripe knows the customer it told us about: the case-opening re-read (issue 12) finds it excluded
    fake_stripe.add_customer("cus_owner")["metadata"] = {"dunning": "off"}
    deliver(stripe_runtime, failed("in_excluded", customer="cus_owner", subscription="sub_owner", amount=12000))
    assert case_of(stripe_runtime, "in_excluded") is None

    answer = admin_client(stripe_runtime).simulate_post(
        "/payment-links", body=json.dumps({"invoice": "in_excluded"}), headers=bearer())
    assert answer.status_code == 400, answer.text
    assert "excluded" in answer.json["error"]
    assert rows(stripe_runtime, "payment_links") == [] and rows(stripe_runtime, "emails") == []
