"""Card events are recorded (brand, last four, expiry, funding, fingerprint; never more), `dunning cards
show`, and invoice.payment_action_required (an email with the confirmation link, no schedule change)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support import card_events as fc
from tests.support.dunning import DAY, T0, case_of, deliver, event, failed, invoice
from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET, load_stripe_file, rows

RECORDED_COLUMNS = {"id", "customer_id", "payment_method_id", "brand", "last4", "exp_month", "exp_year", "funding",
                    "fingerprint", "is_default", "event_id", "event_type", "recorded_at"}


def test_every_card_event_records_brand_last4_expiry_funding_fingerprint_and_the_event(any_runtime):
    events = [
        fc.pm_attached("pm_a", "cus_1", brand="visa", last4="4242", exp=(1, 2031)),
        fc.pm_updated("pm_a", "cus_1", exp=(2, 2032), previous_card={"exp_month": 1, "exp_year": 2031}),
        fc.pm_updated("pm_a", "cus_1", event_type="payment_method.automatically_updated", last4="1881",
                      exp=(3, 2033), previous_card={"last4": "4242"}),
        fc.source_created("card_b", "cus_1", brand="Visa", last4="0005", exp=(4, 2034)),
        fc.source_created("card_b", "cus_1", event_type="customer.source.updated", exp=(5, 2035)),
        fc.setup_intent_succeeded("pm_a", "cus_1"),
        fc.customer_updated("cus_1", default_pm="pm_a", previous_default=None),
    ]
    for evt in events:
        assert deliver(any_runtime, evt) == "processed", evt["type"]
    recorded = sorted(rows(any_runtime, "cards"), key=lambda r: r["recorded_at"])
    assert [r["event_type"] for r in recorded] == [e["type"] for e in events]
    assert set(recorded[0]) == RECORDED_COLUMNS
    first = recorded[0]
    assert (first["brand"], first["last4"], first["exp_month"], first["exp_year"], first["funding"],
            first["fingerprint"]) == ("visa", "4242", 1, 2031, "credit", "fp_pm_a")
    assert (recorded[2]["last4"], recorded[2]["exp_year"]) == ("1881", 2033)
    assert (recorded[3]["brand"], recorded[3]["payment_method_id"]) == ("visa", "card_b")
    # an event naming only the id (setup_intent) gets the details we knew; the default is marked
    assert (recorded[5]["last4"], recorded[5]["exp_year"]) == ("1881", 2033)
    assert recorded[6]["is_default"] and recorded[6]["payment_method_id"] == "pm_a"
    dumped = json.dumps(recorded, default=str)
    assert "Secret" not in dumped and "checks" not in dumped


def test_a_redelivered_card_event_is_recorded_once(runtime):
    evt = fc.pm_attached("pm_once", "cus_1")
    assert deliver(runtime, evt) == "processed"
    assert deliver(runtime, evt) == "processed"
    assert len(rows(runtime, "cards")) == 1


def test_a_non_card_payment_method_or_a_detached_one_is_ignored(runtime):
    detached = fc.pm_attached("pm_gone", "cus_1")
    detached["data"]["object"]["customer"] = None
    sepa = fc.pm_attached("pm_sepa", "cus_1")
    sepa["data"]["object"]["type"] = "sepa_debit"
    assert deliver(runtime, detached) == "ignored"
    assert deliver(runtime, sepa) == "ignored"
    assert rows(runtime, "cards") == []


def test_an_older_customer_updated_arriving_late_records_no_new_default(runtime):
    assert deliver(runtime, fc.customer_updated("cus_1", default_pm="pm_new", previous_default="pm_old",
                                                created=T0 + 500)) == "processed"
    assert deliver(runtime, fc.customer_updated("cus_1", default_pm="pm_old", previous_default=None,
                                                created=T0 + 100)) == "processed"
    assert [r["payment_method_id"] for r in rows(runtime, "cards")] == ["pm_new"]
    assert rows(runtime, "customers", id="cus_1")[0]["default_payment_method"] == "pm_new"


def test_a_customer_update_that_does_not_touch_the_default_records_no_card(runtime):
    deliver(runtime, fc.customer_updated("cus_1", default_pm="pm_x", previous_default=None, change=False))
    assert rows(runtime, "cards") == []


def cli_env(runtime) -> dict[str, str]:
    """The environment a `dunning` command reads, pointing at this test's database."""
    return {"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_FORMAT": "json",
            "DATABASE_URL": runtime.settings.database_url, "DUNNING_VAR_DIR": str(runtime.settings.var_dir)}


def test_cards_show_lists_the_default_first_with_its_events(runtime):
    from worker.cli import main
    deliver(runtime, fc.pm_attached("pm_old", "cus_show", last4="1111", created=T0 + 10))
    deliver(runtime, fc.pm_attached("pm_new", "cus_show", brand="mastercard", last4="5555", exp=(9, 2031),
                                    created=T0 + 20))
    deliver(runtime, fc.customer_updated("cus_show", default_pm="pm_new", previous_default="pm_old",
                                         created=T0 + 30))
    cli = CliRunner(env=cli_env(runtime))
    result = cli.invoke(main, ["cards", "show", "cus_show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["default_payment_method"] == "pm_new"
    by_id = {c["payment_method_id"]: c for c in data["cards"]}
    assert by_id["pm_new"]["is_default"] and not by_id["pm_old"]["is_default"]
    assert (by_id["pm_new"]["brand"], by_id["pm_new"]["last4"], by_id["pm_new"]["events"]) == ("mastercard", "5555", 2)
    human = cli.invoke(main, ["cards", "show", "cus_show"])
    assert human.exit_code == 0 and human.output.splitlines()[1].startswith("  * pm_new")
    assert cli.invoke(main, ["cards", "show", "cus_nobody"]).exit_code == 1


# -- invoice.payment_action_required --------------------------------------------------------
def action_required(invoice_id: str, *, attempt: int = 2, created: int = T0 + DAY, redirect: str | None = None,
                    event_id: str | None = None) -> dict:
    base = load_stripe_file("events/stripe-ruby-mock/invoice.payment_action_required.json")["data"]["object"]
    obj = invoice(invoice_id, customer="cus_sca", attempt_count=attempt)
    obj["hosted_invoice_url"] = base["hosted_invoice_url"]
    if redirect:
        obj["payment_intent"] = {"id": "pi_sca", "object": "payment_intent", "status": "requires_action",
                                 "next_action": {"type": "redirect_to_url",
                                                 "redirect_to_url": {"url": redirect, "return_url": None}}}
    return event("invoice.payment_action_required", obj, created, event_id=event_id)


def test_action_required_emails_the_confirmation_link_and_leaves_the_schedule_alone(any_runtime):
    assert deliver(any_runtime, failed("in_sca", customer="cus_sca")) == "processed"
    before = case_of(any_runtime, "in_sca")
    evt = action_required("in_sca")
    assert deliver(any_runtime, evt) == "processed"
    # Stripe may send the same fact again under another event id: still one email per attempt
    assert deliver(any_runtime, {**evt, "id": "evt_sca_again"}) == "processed"
    (email,) = rows(any_runtime, "emails", template="action-required")
    assert email["case_id"] == before["id"] and email["recipient"] == "owner@example.com"
    assert evt["data"]["object"]["hosted_invoice_url"] in email["body_text"]
    after = case_of(any_runtime, "in_sca")
    for column in ("state", "next_step", "next_step_at", "attempt_count", "disrupt_at", "version"):
        assert after[column] == before[column], column
    assert rows(any_runtime, "case_transitions", case_id=before["id"], trigger="payment_failed") == []


def test_action_required_prefers_the_payment_intents_redirect_url(runtime):
    deliver(runtime, failed("in_sca2", customer="cus_sca"))
    url = "https://hooks.stripe.com/3d_secure_2/hosted?merchant=acct_x&payment_intent=pi_sca"
    deliver(runtime, action_required("in_sca2", redirect=url))
    (email,) = rows(runtime, "emails", template="action-required")
    assert url in email["body_text"]


@pytest.mark.parametrize("status", ["paid", "void"])
def test_action_required_for_an_invoice_already_settled_sends_nothing(runtime, status):
    deliver(runtime, failed("in_done", customer="cus_sca"))
    settled = action_required("in_done")
    settled["data"]["object"]["status"] = status
    assert deliver(runtime, settled) == "ignored"
    assert rows(runtime, "emails", template="action-required") == []
