"""Expiring cards: one card-expiring email per card and expiry, to owners with an active subscription."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import update

from tests.support import card_events as fc
from tests.support.dunning import deliver
from tests.support.helpers import drain, rows
from worker.scheduling.card_expiry import CURSOR, scan_expiring_cards
from worker.scheduling.scheduler import run_pass

NOW = datetime(2026, 12, 3, 9, 0)  # the scan runs on 3 December 2026
THIS_MONTH = (12, 2026)


def owner(runtime, customer="cus_exp", status="active", metadata=None):
    deliver(runtime, fc.customer_created(customer, metadata=metadata))
    deliver(runtime, fc.subscription(f"sub_{customer}", customer, status=status))


def expiring_emails(runtime):
    return rows(runtime, "emails", template="card-expiring")


def test_one_card_expiring_email_per_card_and_expiry_however_many_times_the_scan_runs(any_runtime):
    owner(any_runtime)
    deliver(any_runtime, fc.pm_attached("pm_exp", "cus_exp", brand="visa", last4="4242", exp=THIS_MONTH))
    assert scan_expiring_cards(any_runtime, NOW) == 1
    for _ in range(3):
        assert scan_expiring_cards(any_runtime, NOW) == 0
    assert run_pass(any_runtime, NOW)["expiring_cards"] == 0
    # Stripe's own warning for the same card and expiry changes nothing
    assert deliver(any_runtime, fc.source_expiring("pm_exp", "cus_exp", exp=THIS_MONTH,
                                                   fingerprint="fp_pm_exp")) == "ignored"
    (email,) = expiring_emails(any_runtime)
    assert email["recipient"] == "owner@example.com" and email["customer_id"] == "cus_exp"
    assert "Visa ending in 4242" in email["subject"] and "12/2026" in email["subject"]
    drain(any_runtime)
    assert expiring_emails(any_runtime)[0]["status"] == "sent"


def test_the_scan_remembers_the_month_and_reads_only_cards_recorded_since(runtime):
    owner(runtime)
    assert scan_expiring_cards(runtime, NOW) == 0
    (cursor,) = rows(runtime, "cursors", name=CURSOR)
    assert json.loads(cursor["value"])["month"] == "2026-12"
    # a card recorded after this month's scan is still warned about on the next pass
    deliver(runtime, fc.pm_attached("pm_late", "cus_exp", exp=THIS_MONTH))
    assert scan_expiring_cards(runtime, NOW) == 1
    assert scan_expiring_cards(runtime, NOW) == 0
    # next month, next expiry: a new email for the card that now expires
    deliver(runtime, fc.pm_attached("pm_jan", "cus_exp", exp=(1, 2027)))
    assert scan_expiring_cards(runtime, datetime(2027, 1, 2)) == 1
    assert len(expiring_emails(runtime)) == 2


def test_owners_without_an_active_subscription_or_excluded_get_no_card_expiring_email(runtime):
    owner(runtime, "cus_canceled", status="canceled")
    owner(runtime, "cus_nosub_excluded", metadata={"dunning": "off"})
    deliver(runtime, fc.customer_created("cus_nosub"))
    for customer in ("cus_canceled", "cus_nosub_excluded", "cus_nosub"):
        deliver(runtime, fc.pm_attached(f"pm_{customer}", customer, exp=THIS_MONTH))
    assert scan_expiring_cards(runtime, NOW) == 0
    assert expiring_emails(runtime) == []


def test_a_card_renewed_by_the_network_or_not_the_default_is_not_warned(runtime):
    owner(runtime)
    deliver(runtime, fc.pm_attached("pm_renewed", "cus_exp", exp=THIS_MONTH))
    deliver(runtime, fc.pm_updated("pm_renewed", "cus_exp", event_type="payment_method.automatically_updated",
                                   exp=(12, 2030), previous_card={"exp_year": 2026}))
    deliver(runtime, fc.pm_attached("pm_spare", "cus_exp", exp=THIS_MONTH))
    deliver(runtime, fc.customer_updated("cus_exp", default_pm="pm_renewed", previous_default=None))
    assert scan_expiring_cards(runtime, NOW) == 0
    assert expiring_emails(runtime) == []


def test_stripes_expiring_warning_sends_the_email_and_a_non_card_source_is_ignored(runtime):
    owner(runtime)
    assert deliver(runtime, fc.source_expiring("card_old", "cus_exp", exp=THIS_MONTH, last4="0005")) == "processed"
    assert deliver(runtime, fc.source_expiring("card_old", "cus_exp", exp=THIS_MONTH, last4="0005")) == "ignored"
    ach = fc.source_expiring("src_ach", "cus_exp", exp=THIS_MONTH)
    ach["data"]["object"] = {"id": "src_ach", "object": "source", "type": "ach_credit_transfer",
                             "customer": "cus_exp", "ach_credit_transfer": {"fingerprint": "x"}}
    assert deliver(runtime, ach) == "ignored"
    (email,) = expiring_emails(runtime)
    assert "ending in 0005" in email["subject"]
    # and the monthly scan does not send it again
    assert scan_expiring_cards(runtime, NOW) == 0


# -- a card whose transaction commits after a scan that saw a newer card ------------------------
def test_a_card_committed_after_a_scan_that_saw_a_newer_card_still_gets_its_card_expiring_email(any_runtime):
    now = datetime(2026, 12, 3, 9, 0)
    deliver(any_runtime, fc.customer_created("cus_exp"))
    deliver(any_runtime, fc.subscription("sub_cus_exp", "cus_exp"))
    deliver(any_runtime, fc.pm_attached("pm_other", "cus_other", exp=(1, 2030)))
    assert scan_expiring_cards(any_runtime, now) == 0
    (seen,) = rows(any_runtime, "cards", payment_method_id="pm_other")

    # A card event whose handler began before pm_other was recorded but committed after the scan:
    # its recorded_at (the handler's clock) is older than what the scan already saw.
    deliver(any_runtime, fc.pm_attached("pm_exp", "cus_exp", exp=(12, 2026)))
    cards = any_runtime.db.table("cards")
    with any_runtime.db.transaction() as conn:
        conn.execute(update(cards).where(cards.c.payment_method_id == "pm_exp")
                     .values(recorded_at=seen["recorded_at"] - timedelta(seconds=2)))

    assert scan_expiring_cards(any_runtime, now) == 1
    assert len(rows(any_runtime, "emails", template="card-expiring")) == 1
    assert scan_expiring_cards(any_runtime, now) == 0
