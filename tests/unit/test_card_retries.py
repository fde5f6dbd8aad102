"""A new default card during dunning retries the failed invoice at once: once per (invoice, card)."""

from __future__ import annotations

import random

import pytest

from tests.support import card_events as fc
from tests.support.dunning import DAY, T0, case_of, deliver, open_case, paid, subscription_deleted
from tests.support.helpers import admin_client, drain, post_event, rows
from worker.stripe.card_retries import run_retry


def new_card_events(pm_id: str = "pm_new", customer: str = "cus_owner", *, brand="mastercard", last4="5555"):
    """What Stripe sends when the owner saves a new card and makes it the default."""
    return [
        fc.pm_attached(pm_id, customer, brand=brand, last4=last4, exp=(8, 2031), created=T0 + DAY),
        fc.setup_intent_succeeded(pm_id, customer, created=T0 + DAY),
        fc.customer_updated(customer, default_pm=pm_id, previous_default="pm_old", created=T0 + DAY + 1),
    ]


def setup_stripe(fake, *, declines=False, subscription_default="pm_old"):
    fake.add_subscription("sub_owner", "cus_owner", default_payment_method=subscription_default)
    fake.add_card("pm_old", "cus_owner", last4="0341", declines=True)
    fake.add_card("pm_new", "cus_owner", brand="mastercard", last4="5555", exp_month=8, exp_year=2031,
                  declines=declines)
    fake.add_customer("cus_owner", default_payment_method="pm_new")


def pay_calls(fake):
    return [r for r in fake.posts("/pay") if not r.replayed]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_new_default_card_is_retried_once_even_when_its_events_arrive_three_times_out_of_order(
        stripe_runtime, fake_stripe, seed):
    setup_stripe(fake_stripe)
    open_case(stripe_runtime, fake_stripe, "in_dun", amount=12000)
    deliveries = new_card_events() * 3
    random.Random(seed).shuffle(deliveries)
    client = admin_client(stripe_runtime)
    for evt in deliveries:
        assert post_event(client, evt).status_code == 200
    drain(stripe_runtime)

    (retry,) = rows(stripe_runtime, "card_retries")
    assert (retry["invoice_id"], retry["payment_method_id"], retry["status"]) == ("in_dun", "pm_new", "succeeded")
    # (invoice, card version), issue 12; the expiry is "unknown" when the default changed before the
    # card's own event said what it is (then it counts as the version tried)
    assert retry["dedupe_key"] in ("in_dun:pm_new:2031-08", "in_dun:pm_new:unknown")
    (call,) = pay_calls(fake_stripe)
    # the subscription's own default is the old card: the new one is named explicitly
    assert call.params == {"payment_method": "pm_new"}
    assert call.idempotency_key == f"dunning-card-retry:{retry['dedupe_key']}"
    assert fake_stripe.applied.count(("invoices.pay", "in_dun:pm_new")) == 1
    # Stripe answered `paid`: the case is recovered at once, no invoice.paid needed (issue 12)
    assert case_of(stripe_runtime, "in_dun")["state"] == "recovered"
    assert rows(stripe_runtime, "emails", template="card-declined-again") == []


def test_a_declined_retry_is_recorded_on_the_case_and_the_owner_gets_one_email_naming_the_new_card(
        stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe, declines=True)
    open_case(stripe_runtime, fake_stripe, "in_dun", amount=12000)
    before = case_of(stripe_runtime, "in_dun")
    client = admin_client(stripe_runtime)
    for evt in new_card_events() * 3:
        post_event(client, evt)
    drain(stripe_runtime)

    (retry,) = rows(stripe_runtime, "card_retries")
    assert (retry["status"], retry["decline_code"]) == ("declined", "insufficient_funds")
    after = case_of(stripe_runtime, "in_dun")
    assert (after["state"], after["next_step"], after["next_step_at"]) == (
        before["state"], before["next_step"], before["next_step_at"])
    assert (after["last_failure_code"], after["last_failure_message"]) == (
        "insufficient_funds", "Your card has insufficient funds.")
    (email,) = rows(stripe_runtime, "emails", template="card-declined-again")
    assert email["recipient"] == "owner@example.com" and email["case_id"] == after["id"]
    assert "Mastercard ending in 5555" in email["subject"] + email["body_text"]
    # the job again (a redelivered message): nothing more is charged or sent
    assert run_retry(stripe_runtime, retry["id"]) == "declined"
    assert len(pay_calls(fake_stripe)) == 1
    assert len(rows(stripe_runtime, "emails", template="card-declined-again")) == 1


def test_when_stripe_would_charge_the_new_card_anyway_the_pay_request_names_no_card(
        sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe, subscription_default=None)
    open_case(sqlite_stripe_runtime, fake_stripe, "in_dun")
    deliver(sqlite_stripe_runtime, new_card_events()[2])
    drain(sqlite_stripe_runtime)
    (call,) = pay_calls(fake_stripe)
    assert call.params == {}
    assert rows(sqlite_stripe_runtime, "card_retries")[0]["status"] == "succeeded"


def test_a_second_new_card_gets_its_own_retry(sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe, declines=True)
    fake_stripe.add_card("pm_third", "cus_owner", last4="4444")
    open_case(sqlite_stripe_runtime, fake_stripe, "in_dun")
    deliver(sqlite_stripe_runtime, new_card_events()[2])
    drain(sqlite_stripe_runtime)
    fake_stripe.customers["cus_owner"]["invoice_settings"]["default_payment_method"] = "pm_third"
    deliver(sqlite_stripe_runtime, fc.pm_attached("pm_third", "cus_owner", last4="4444", created=T0 + 2 * DAY))
    deliver(sqlite_stripe_runtime, fc.customer_updated("cus_owner", default_pm="pm_third", previous_default="pm_new",
                                                       created=T0 + 2 * DAY + 1))
    drain(sqlite_stripe_runtime)
    assert {(r["payment_method_id"], r["status"]) for r in rows(sqlite_stripe_runtime, "card_retries")} == {
        ("pm_new", "declined"), ("pm_third", "succeeded")}


def test_a_customer_without_an_unpaid_invoice_in_dunning_gets_no_retry(sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe)
    for evt in new_card_events():
        deliver(sqlite_stripe_runtime, evt)
    open_case(sqlite_stripe_runtime, fake_stripe, "in_recovered", customer="cus_other")
    assert deliver(sqlite_stripe_runtime, paid("in_recovered", customer="cus_other")) == "processed"
    deliver(sqlite_stripe_runtime, fc.customer_updated("cus_other", default_pm="pm_x", previous_default="pm_y",
                                                       created=T0 + 3 * DAY))
    drain(sqlite_stripe_runtime)
    assert rows(sqlite_stripe_runtime, "card_retries") == []
    assert [r for r in fake_stripe.requests if not r.path.startswith("/v1/customers/")] == []  # prefetch reads


def test_a_card_that_is_not_the_default_or_an_update_without_a_new_number_triggers_no_retry(
        sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe)
    open_case(sqlite_stripe_runtime, fake_stripe, "in_dun")
    deliver(sqlite_stripe_runtime, fc.pm_attached("pm_spare", "cus_owner"))  # not the default
    deliver(sqlite_stripe_runtime, fc.customer_updated("cus_owner", default_pm="pm_new", previous_default="pm_old",
                                                       created=T0 + DAY))
    drain(sqlite_stripe_runtime)
    assert len(rows(sqlite_stripe_runtime, "card_retries")) == 1
    rows_before = len(rows(sqlite_stripe_runtime, "cards"))
    deliver(sqlite_stripe_runtime, fc.pm_updated("pm_new", "cus_owner"))  # billing details only
    assert len(rows(sqlite_stripe_runtime, "cards")) == rows_before + 1
    assert len(rows(sqlite_stripe_runtime, "card_retries")) == 1


def test_a_network_updated_default_card_is_retried(sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe, subscription_default=None)
    fake_stripe.customers["cus_owner"]["invoice_settings"]["default_payment_method"] = "pm_old"
    fake_stripe.declining.discard("pm_old")  # the bank issued a new number behind the same payment method
    open_case(sqlite_stripe_runtime, fake_stripe, "in_dun")
    deliver(sqlite_stripe_runtime, fc.customer_updated("cus_owner", default_pm="pm_old", previous_default=None,
                                                       created=T0 - 10, change=False))
    renewed = fc.pm_updated("pm_old", "cus_owner", event_type="payment_method.automatically_updated",
                            last4="9999", previous_card={"last4": "0341"})
    deliver(sqlite_stripe_runtime, renewed)
    drain(sqlite_stripe_runtime)
    (retry,) = rows(sqlite_stripe_runtime, "card_retries")
    assert (retry["payment_method_id"], retry["status"]) == ("pm_old", "succeeded")


def test_a_retry_whose_invoice_was_paid_meanwhile_charges_nothing(sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe)
    open_case(sqlite_stripe_runtime, fake_stripe, "in_dun")
    fake_stripe.invoices["in_dun"]["status"] = "paid"
    deliver(sqlite_stripe_runtime, new_card_events()[2])
    drain(sqlite_stripe_runtime)
    (retry,) = rows(sqlite_stripe_runtime, "card_retries")
    assert retry["status"] == "skipped" and "paid" in retry["last_error"]
    assert pay_calls(fake_stripe) == []


def test_a_lost_answer_from_stripe_is_retried_with_the_same_key_and_charges_once(sqlite_stripe_runtime, fake_stripe):
    setup_stripe(fake_stripe)
    open_case(sqlite_stripe_runtime, fake_stripe, "in_dun")
    fake_stripe.sever_next.append("invoices.pay")
    deliver(sqlite_stripe_runtime, new_card_events()[2])
    drain(sqlite_stripe_runtime)
    posts = fake_stripe.posts("/pay")
    assert len(posts) == 2 and posts[1].replayed
    assert fake_stripe.applied.count(("invoices.pay", "in_dun:pm_new")) == 1
    assert rows(sqlite_stripe_runtime, "card_retries")[0]["status"] == "succeeded"


def test_without_a_stripe_key_the_retry_fails_visibly(make_runtime):
    runtime = make_runtime()
    open_case(runtime, None, "in_nokey", customer="cus_owner")
    deliver(runtime, new_card_events()[2])
    drain(runtime)
    (retry,) = rows(runtime, "card_retries")
    assert retry["status"] == "failed" and "STRIPE_API_KEY" in retry["last_error"]


def test_a_retry_whose_message_was_lost_is_sent_again_by_the_scheduler_sweep(sqlite_stripe_runtime, fake_stripe):
    from datetime import timedelta

    from worker.pure.clock import utcnow
    from worker.stripe.jobs import sweep_stripe_jobs
    runtime = sqlite_stripe_runtime
    setup_stripe(fake_stripe)
    open_case(runtime, fake_stripe, "in_dun")
    deliver(runtime, new_card_events()[2])
    runtime.broker.flush_all()  # the broker lost every message (crash, flush)
    assert sweep_stripe_jobs(runtime, utcnow()) == 0  # not stale yet
    assert sweep_stripe_jobs(runtime, utcnow() + timedelta(minutes=11)) == 1
    drain(runtime)
    assert rows(runtime, "card_retries")[0]["status"] == "succeeded"
    assert sweep_stripe_jobs(runtime, utcnow() + timedelta(minutes=30)) == 0


def test_a_payment_link_request_whose_message_was_lost_is_sent_again(sqlite_stripe_runtime, fake_stripe):
    from datetime import timedelta

    from worker.pure.clock import utcnow
    from worker.scheduling.scheduler import run_pass
    runtime = sqlite_stripe_runtime
    open_case(runtime, fake_stripe, "in_lost")
    assert admin_client(runtime).simulate_post(
        "/payment-links", json={"invoice": "in_lost"},
        headers={"Authorization": "Bearer test-admin-token-0123456789"}).status_code == 202
    runtime.broker.flush_all()
    assert run_pass(runtime, utcnow() + timedelta(minutes=11))["stripe_jobs_enqueued"] == 1
    drain(runtime)
    assert rows(runtime, "payment_links")[0]["status"] == "created"
    assert len(rows(runtime, "emails", template="payment-link")) == 1


def test_a_new_default_named_without_previous_attributes_is_still_retried_once(sqlite_stripe_runtime, fake_stripe):
    """Some senders (localstripe, older API shapes) omit previous_attributes: compare with the stored default."""
    setup_stripe(fake_stripe)
    fake_stripe.add_customer("cus_owner", default_payment_method="pm_old")  # what we knew at the failure
    open_case(sqlite_stripe_runtime, fake_stripe, "in_noprev", amount=12000)
    client = admin_client(sqlite_stripe_runtime)
    before = fc.customer_updated("cus_owner", default_pm="pm_old", previous_default=None, change=False,
                                 created=T0 + DAY)
    after = fc.customer_updated("cus_owner", default_pm="pm_new", previous_default=None, change=False,
                                created=T0 + DAY + 5)
    for evt in (before, after):
        evt["data"].pop("previous_attributes", None)
        assert post_event(client, evt).status_code == 200
        drain(sqlite_stripe_runtime)
    assert [(r["invoice_id"], r["payment_method_id"]) for r in rows(sqlite_stripe_runtime, "card_retries")] == [
        ("in_noprev", "pm_new")]
    assert len(pay_calls(fake_stripe)) == 1


# -- a subscription deleted while a card retry is in flight ------------------------------------
def test_a_decline_that_returns_after_the_subscription_was_deleted_sends_no_card_declined_again_email(
        stripe_runtime, fake_stripe):
    fake_stripe.add_subscription("sub_owner", "cus_owner", default_payment_method="pm_old")
    fake_stripe.add_card("pm_new", "cus_owner", brand="mastercard", last4="5555", declines=True)
    fake_stripe.add_customer("cus_owner", default_payment_method="pm_new")
    open_case(stripe_runtime, fake_stripe, "in_dun", amount=12000)
    for evt in (fc.pm_attached("pm_new", "cus_owner", brand="mastercard", last4="5555", created=T0 + DAY),
                fc.customer_updated("cus_owner", default_pm="pm_new", previous_default="pm_old",
                                    created=T0 + DAY + 1)):
        deliver(stripe_runtime, evt)
    (retry,) = rows(stripe_runtime, "card_retries")

    # While the retry's /pay call is at Stripe, the subscription is deleted and its case ends.
    original_pay = fake_stripe._pay_invoice

    def pay_while_the_subscription_is_deleted(invoice_id, params):
        deliver(stripe_runtime, subscription_deleted("sub_owner", "cus_owner", created=T0 + DAY + 5))
        return original_pay(invoice_id, params)

    fake_stripe._pay_invoice = pay_while_the_subscription_is_deleted
    run_retry(stripe_runtime, retry["id"])

    assert case_of(stripe_runtime, "in_dun")["state"] == "voided"
    assert rows(stripe_runtime, "emails", template="card-declined-again") == []
    assert rows(stripe_runtime, "card_retries")[0]["status"] == "declined"
