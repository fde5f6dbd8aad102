"""A customer known only from its invoice is fetched from Stripe before the handler runs.

The policy here takes the owner of record from customer metadata (`owner_email`) and excludes
`dunning = off`: neither is in an invoice payload. The strict local Stripe fake (tests/support/fake_stripe.py)
serves GET /v1/customers/:id and counts every request.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from tests.support import card_events as fc
from tests.support.fake_stripe import FakeStripe, FakeStripeServer, Recorded, _error
from tests.support.dunning import DAY, T0, case_of, emails, failed, tick
from tests.support.dunning import _store_and_process as deliver  # these customers are unknown on purpose
from tests.support.helpers import make_event, rows
from worker.intake import customer_prefetch
from worker.intake.processing import process_event
from worker.stripe.gateway import StripeUnavailable

API_KEY = "sk_test_x"
OWNER = "owner@platform.example"  # the platform's owner of record, in customer metadata
INVOICE_EMAIL = "billing-contact@example.com"  # the invoice's customer_email: never the recipient here

POLICY = textwrap.dedent("""
    [recipient]
    source = "customer.metadata.owner_email"

    [exclude]
    customer_metadata = { dunning = "off" }

    [schedules.default]
    disrupt_after_days = 14
    steps = [
      { day = 0,  email = "payment-failed" },
      { day = 3,  email = "reminder" },
      { day = 7,  email = "disruption-warning", action = "schedule_disruption" },
      { day = 12, email = "final-notice" },
      { day = 14, email = "service-disrupted", action = "disrupt" },
    ]
""")


@dataclass
class OutageFakeStripe(FakeStripe):
    """The fake, plus an outage switch: while `outage` is on, Stripe answers every request with a 500."""

    outage: bool = False

    def handle(self, method, path, headers, body):
        if self.outage:
            self.requests.append(Recorded(method, urlsplit(path).path, [], None, 500))
            return 500, _error("api_error", None, None, "An unknown error occurred"), {}, False
        return super().handle(method, path, headers, body)


@pytest.fixture
def fake():
    with FakeStripeServer(OutageFakeStripe(api_key=API_KEY)) as served:
        yield served


@pytest.fixture
def policy_path(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return str(path)


@pytest.fixture(params=["sqlite", "postgres"])
def keyed_runtime(make_runtime, policy_path, fake, request):
    return make_runtime(db=request.param, DUNNING_POLICY=policy_path, STRIPE_API_KEY=API_KEY,
                        STRIPE_API_BASE=fake.base_url)


@pytest.fixture
def sqlite_keyed_runtime(make_runtime, policy_path, fake):
    return make_runtime(DUNNING_POLICY=policy_path, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake.base_url)


def stripe_customer(fake: FakeStripe, customer_id: str, **metadata: str) -> None:
    fake.add_customer(customer_id, email=INVOICE_EMAIL)["metadata"] = dict(metadata)


def customer_gets(fake: FakeStripe, customer_id: str = "cus_test_1") -> list[Recorded]:
    return [r for r in fake.requests if r.method == "GET" and r.path == f"/v1/customers/{customer_id}"]


def customer_row(runtime, customer_id: str = "cus_test_1") -> dict:
    return rows(runtime, "customers", id=customer_id)[0]


def owner_in_metadata(runtime) -> str | None:
    return json.loads(customer_row(runtime)["metadata"]).get("owner_email")


# -- the defect: the day-0 email and the exclusion need the customer's metadata --------------
def test_a_first_failure_without_a_customer_event_mails_the_owner_named_in_customer_metadata(keyed_runtime, fake):
    stripe_customer(fake, "cus_test_1", owner_email=OWNER)
    assert deliver(keyed_runtime, failed(email=INVOICE_EMAIL)) == "processed"
    sent = emails(keyed_runtime)
    assert [(e["template"], e["recipient"]) for e in sent] == [("payment-failed", OWNER)]
    assert len(customer_gets(fake)) == 1
    assert customer_row(keyed_runtime)["source_created"] > 0  # known now: never fetched again


def test_a_customer_excluded_by_metadata_opens_no_case_and_gets_no_mail(keyed_runtime, fake):
    stripe_customer(fake, "cus_test_1", owner_email=OWNER, dunning="off")
    assert deliver(keyed_runtime, failed(email=INVOICE_EMAIL)) == "ignored"  # the handler's word for "left alone"
    assert case_of(keyed_runtime) is None
    assert emails(keyed_runtime) == []


# -- one GET per unknown customer, never for a known one ------------------------------------
def test_a_known_customer_is_read_again_when_a_case_opens_and_the_owner_change_is_followed(
        sqlite_keyed_runtime, fake):
    """Changed by issue 12: the owner moved at Stripe without a customer.* event reaching us; the
    read when the case opens follows it (before, a known customer was never fetched)."""
    new_owner = "moved-owner@platform.example"
    stripe_customer(fake, "cus_test_1", owner_email=new_owner)
    deliver(sqlite_keyed_runtime, fc.customer_created("cus_test_1", email=INVOICE_EMAIL,
                                                      metadata={"owner_email": OWNER}))
    assert deliver(sqlite_keyed_runtime, failed(email=INVOICE_EMAIL)) == "processed"
    assert len(customer_gets(fake)) == 1
    assert [e["recipient"] for e in emails(sqlite_keyed_runtime)] == [new_owner]
    deliver(sqlite_keyed_runtime, failed(email=INVOICE_EMAIL, created=T0 + 60, attempt_count=2))
    assert len(customer_gets(fake)) == 1  # a later attempt of an open case reads nothing more


def test_a_customer_is_read_once_per_case_opened(sqlite_keyed_runtime, fake):
    stripe_customer(fake, "cus_test_1", owner_email=OWNER)
    deliver(sqlite_keyed_runtime, failed("in_first", email=INVOICE_EMAIL))
    deliver(sqlite_keyed_runtime, failed("in_second", email=INVOICE_EMAIL, created=T0 + 60))
    assert len(customer_gets(fake)) == 2  # one read as each case opens (issue 12)
    # one customer: the second failure joins the first's day-0 email (issue 14: one email per account and step)
    assert [(e["recipient"], e["invoice_ids"]) for e in emails(sqlite_keyed_runtime)] == [(OWNER, "in_first,in_second")]


def test_an_event_that_carries_the_customer_itself_fetches_nothing(sqlite_keyed_runtime, fake):
    deliver(sqlite_keyed_runtime, fc.customer_created("cus_test_1", metadata={"owner_email": OWNER}))
    assert fake.requests == []


# -- newest wins between the fetched snapshot and real customer events ----------------------
def customer_updated(owner: str, created: int) -> dict:
    obj = {"id": "cus_test_1", "object": "customer", "email": INVOICE_EMAIL, "name": "Ada",
           "metadata": {"owner_email": owner}, "invoice_settings": {"default_payment_method": None},
           "default_source": None}
    return make_event("customer.updated", obj, event_id=f"evt_cu_{created}", created=created,
                      previous_attributes={"metadata": {"owner_email": "previous@platform.example"}})


def test_a_customer_event_older_than_the_fetching_event_loses_to_the_fetch_and_a_newer_one_wins(
        sqlite_keyed_runtime, fake):
    stripe_customer(fake, "cus_test_1", owner_email=OWNER)
    deliver(sqlite_keyed_runtime, failed(email=INVOICE_EMAIL, created=T0))
    deliver(sqlite_keyed_runtime, customer_updated("older@platform.example", created=T0 - 10))  # delivered late
    assert owner_in_metadata(sqlite_keyed_runtime) == OWNER
    deliver(sqlite_keyed_runtime, customer_updated("newer@platform.example", created=T0 + 10))
    assert owner_in_metadata(sqlite_keyed_runtime) == "newer@platform.example"


# -- what Stripe answers --------------------------------------------------------------------
def test_a_stripe_outage_fails_the_event_transiently_and_the_retry_succeeds(sqlite_keyed_runtime, fake):
    stripe_customer(fake, "cus_test_1", owner_email=OWNER)
    fake.outage = True
    evt = failed(email=INVOICE_EMAIL)
    with pytest.raises(StripeUnavailable):
        deliver(sqlite_keyed_runtime, evt)
    stored = rows(sqlite_keyed_runtime, "events", id=evt["id"])[0]
    assert stored["status"] == "failed" and "customers.retrieve" in stored["last_error"]
    assert case_of(sqlite_keyed_runtime) is None  # no handler ran: nothing to undo

    fake.outage = False
    assert process_event(sqlite_keyed_runtime, evt["id"]) == "processed"  # the actor's retry
    assert [(e["template"], e["recipient"]) for e in emails(sqlite_keyed_runtime)] == [("payment-failed", OWNER)]


def test_a_customer_stripe_does_not_know_is_recorded_deleted_and_gets_no_mail(sqlite_keyed_runtime, fake):
    assert deliver(sqlite_keyed_runtime, failed(email=INVOICE_EMAIL)) == "processed"
    assert len(customer_gets(fake)) == 1 and customer_gets(fake)[0].status == 404
    assert customer_row(sqlite_keyed_runtime)["deleted"]
    assert emails(sqlite_keyed_runtime) == []


def test_a_live_event_is_not_looked_up_with_a_test_key(sqlite_keyed_runtime, fake):
    evt = failed(email=INVOICE_EMAIL)
    evt["livemode"] = True
    assert deliver(sqlite_keyed_runtime, evt) == "processed"
    assert fake.requests == []
    assert not customer_row(sqlite_keyed_runtime)["deleted"]  # a 404 from the wrong mode would have said so


# -- without STRIPE_API_KEY: as before, and the refusals are visible -------------------------
def test_without_an_api_key_nothing_is_fetched_and_the_refused_emails_are_logged(
        make_runtime, policy_path, fake, monkeypatch):
    runtime = make_runtime(DUNNING_POLICY=policy_path, STRIPE_API_BASE=fake.base_url)
    monkeypatch.setattr(customer_prefetch, "_warned_without_key", type(customer_prefetch._warned_without_key)())
    stripe_customer(fake, "cus_test_1", owner_email=OWNER)
    with capture_logs() as logs:
        assert deliver(runtime, failed(email=INVOICE_EMAIL)) == "processed"
        assert deliver(runtime, failed("in_test_2", email=INVOICE_EMAIL, created=T0 + 5)) == "processed"
        tick(runtime, T0 + 3 * DAY + 60)

    assert fake.requests == []
    assert case_of(runtime)["state"] == "failing"  # dunning goes on: the case and its schedule stand
    assert emails(runtime) == []
    refused = [e for e in logs if e["event"] == "email.refused_no_recipient"]
    assert {e["template"] for e in refused} == {"payment-failed", "reminder"}
    assert all(e["log_level"] == "warning" for e in refused)
    assert INVOICE_EMAIL not in repr(logs)  # masked
    assert [e["log_level"] for e in logs if e["event"] == "customer_prefetch.disabled_without_api_key"] == ["warning"]
