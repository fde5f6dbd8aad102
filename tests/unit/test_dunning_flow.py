"""A failed invoice from the webhook to its emails: opened once, stepped by the scheduler, ended by Stripe.

Events are posted signed to the real webhook and processed by a real dramatiq Worker on the stub
broker; the scheduler's step job runs as of a chosen instant. Checks are on the outbox rows.
"""

from __future__ import annotations

import json
import threading

import falcon.testing
import pytest
from click.testing import CliRunner

from handlers import subscriptions
from handlers.context import StripeEvent
from tests.support import card_events as fc
from tests.support import dunning as fx
from tests.support.dunning import (
    DAY,
    T0,
    case_of,
    deliver,
    ended,
    failed,
    notices,
    paid,
    post,
    subscription_deleted,
    templates,
    tick,
)
from tests.support.helpers import rows
from worker.infra.unit_of_work import context_in
from worker.pure.clock import utcnow
from worker.web.app import create_app

STEP_TEMPLATES = ["payment-failed", "reminder", "disruption-warning", "final-notice", "service-disrupted"]


def event_status(runtime, evt: dict) -> str:
    return rows(runtime, "events", id=evt["id"])[0]["status"]


class TestOnSqliteAndPostgres:
    """The acceptance paths, on both databases."""

    def test_a_signed_payment_failed_sends_one_payment_failed_email_to_the_owner_and_a_repost_adds_nothing(self, any_web):
        runtime, client = any_web
        evt = fx.failed()
        post(runtime, client, evt)
        [email] = fx.emails(runtime)
        assert (email["template"], email["recipient"], email["invoice_id"]) == \
               ("payment-failed", "owner@example.com", "in_test_1")
        post(runtime, client, evt)
        assert fx.templates(runtime) == ["payment-failed"]
        assert len(rows(runtime, "cases")) == 1

    def test_ticks_give_the_reminder_once_and_a_late_tick_catches_up_with_the_warning_only(self, any_web):
        """Changed by issue 12: a late pass no longer sends every missed step in a burst; it sends the
        latest one that makes sense (the warning, never a disruption before it), moves the date so
        the owner gets min_warning_days, and the rest follows on the moved calendar."""
        runtime, client = any_web
        post(runtime, client, fx.failed())
        fx.tick(runtime, T0 + 3 * DAY)
        assert fx.templates(runtime) == ["payment-failed", "reminder"]
        fx.tick(runtime, T0 + 3 * DAY)
        assert fx.templates(runtime) == ["payment-failed", "reminder"]
        fx.tick_late(runtime, T0 + 15 * DAY)  # the scheduler was down from day 3 to day 15
        assert fx.templates(runtime) == ["payment-failed", "reminder", "disruption-warning"]
        assert fx.case_of(runtime)["disrupt_at"] == fx.at(T0 + 18 * DAY)
        fx.tick_late(runtime, T0 + 15 * DAY)
        assert fx.templates(runtime) == ["payment-failed", "reminder", "disruption-warning"]
        fx.tick(runtime, T0 + 30 * DAY)
        assert fx.templates(runtime) == STEP_TEMPLATES
        case = fx.case_of(runtime)
        assert [e["dedupe_key"] for e in fx.emails(runtime)] == [f"case:{case['id']}:step:{n}" for n in range(5)]
        assert case["state"] == "disrupted" and case["next_step_at"] is None

    def test_payment_stops_the_schedule_thanks_once_and_an_older_failure_delivered_later_changes_nothing(self, any_web):
        runtime, client = any_web
        first = fx.failed(created=T0)
        post(runtime, client, first)
        fx.tick(runtime, T0 + 3 * DAY)
        post(runtime, client, fx.paid(created=T0 + 4 * DAY))
        post(runtime, client, fx.failed(created=T0 + 2 * DAY, attempt_count=2))
        post(runtime, client, fx.ended("invoice.payment_succeeded", created=T0 + 4 * DAY))
        fx.tick(runtime, T0 + 20 * DAY)
        assert fx.templates(runtime) == ["payment-failed", "reminder", "payment-received"]
        case = fx.case_of(runtime)
        assert case["state"] == "recovered" and case["attempt_count"] == 1
        assert fx.transitions(runtime, case["id"]) == [(None, "failing", "opened"),
                                                       ("failing", "recovered", "invoice_paid")]


def test_invoice_paid_delivered_before_its_payment_failed_leaves_the_case_recovered_and_sends_nothing(web):
    runtime, client = web
    post(runtime, client, fx.paid(created=T0 + DAY))
    assert rows(runtime, "cases") == [] and rows(runtime, "invoices")[0]["status"] == "paid"
    post(runtime, client, fx.failed(created=T0))
    post(runtime, client, fx.failed(created=T0 + DAY // 2, attempt_count=2))
    fx.tick(runtime, T0 + 20 * DAY)
    case = fx.case_of(runtime)
    assert case["state"] == "recovered" and case["next_step_at"] is None
    assert fx.transitions(runtime, case["id"]) == [(None, "failing", "opened"),
                                                   ("failing", "recovered", "invoice_paid")]
    assert fx.emails(runtime) == [] and fx.notices(runtime) == []


def test_dunning_tick_at_an_instant_runs_the_due_steps(web):
    from worker.cli import main
    runtime, client = web
    post(runtime, client, fx.failed())
    result = CliRunner().invoke(main, ["tick", "--at", "2026-11-21T11:06:40Z", "--json"])
    assert result.exit_code == 0, result.output
    assert '"steps_enqueued": 1' in result.output
    fx.drain_queues(runtime, ("steps",))
    assert fx.templates(runtime) == ["payment-failed", "reminder"]


@pytest.mark.parametrize("shape", ["2025", "2018"])
def test_both_api_shapes_open_a_case_on_the_invoices_subscription(web, shape):
    runtime, client = web
    post(runtime, client, fx.failed(shape=shape, subscription="sub_shape"))
    case = fx.case_of(runtime)
    assert (case["subscription_id"], case["account_id"], case["state"]) == ("sub_shape", "sub_shape", "failing")
    assert fx.templates(runtime) == ["payment-failed"]
    assert rows(runtime, "accounts", id="sub_shape")[0]["status"] == "active"


def test_a_one_off_invoice_has_the_customer_as_its_account(web):
    runtime, client = web
    post(runtime, client, fx.failed(subscription=None))
    assert fx.case_of(runtime)["account_id"] == "cus_test_1"


def test_the_first_failure_sets_day_zero_and_later_attempts_update_the_retry_the_card_and_the_decline(web):
    runtime, client = web
    post(runtime, client, fx.failed(created=T0))
    case = fx.case_of(runtime)
    assert case["first_failed_at"] == fx.at(T0) and case["next_payment_attempt"] == fx.at(T0 + 3 * DAY)
    assert case["next_step_at"] == fx.at(T0 + 3 * DAY)
    post(runtime, client, fx.failed(created=T0 + 3 * DAY, attempt_count=2, next_payment_attempt=T0 + 5 * DAY,
                                    card=("visa", "4242")))
    case = fx.case_of(runtime)
    assert (case["attempt_count"], case["next_payment_attempt"], case["card_brand"], case["card_last4"],
            case["last_failure_code"]) == (2, fx.at(T0 + 5 * DAY), "visa", "4242", "card_declined")
    assert case["first_failed_at"] == fx.at(T0)
    # an attempt older than what the case holds, delivered late, does not overwrite it
    post(runtime, client, fx.failed(created=T0 + DAY, attempt_count=1, next_payment_attempt=T0 + 2 * DAY))
    case = fx.case_of(runtime)
    assert (case["attempt_count"], case["next_payment_attempt"]) == (2, fx.at(T0 + 5 * DAY))
    assert fx.templates(runtime) == ["payment-failed"]
    assert [t[2] for t in fx.transitions(runtime, case["id"])] == ["opened", "payment_failed"]


def test_an_earlier_failure_delivered_after_a_later_one_moves_day_zero_back(web):
    runtime, client = web
    post(runtime, client, fx.failed(created=T0 + DAY, attempt_count=2))
    post(runtime, client, fx.failed(created=T0, attempt_count=1))
    case = fx.case_of(runtime)
    assert case["first_failed_at"] == fx.at(T0) and case["next_step_at"] == fx.at(T0 + 3 * DAY)
    assert case["attempt_count"] == 2
    assert fx.templates(runtime) == ["payment-failed"]


def test_a_customer_excluded_by_policy_metadata_gets_no_case_and_no_mail(web):
    runtime, client = web
    customer = {"id": "cus_test_1", "object": "customer", "email": "owner@example.com",
                "metadata": {"dunning": "off"}}
    post(runtime, client, fx.event("customer.created", customer, T0 - DAY))
    evt = fx.failed()
    post(runtime, client, evt)
    assert rows(runtime, "cases") == [] and fx.emails(runtime) == []
    assert event_status(runtime, evt) == "ignored"


def test_the_owner_in_customer_metadata_receives_the_mail_when_the_policy_names_it(make_runtime, tmp_path):
    from config.settings import PROJECT_ROOT
    policy = (PROJECT_ROOT / "config" / "policy.toml").read_text().replace(
        'source = "customer.email"', 'source = "customer.metadata.owner_email"')
    (tmp_path / "policy.toml").write_text(policy)
    runtime = make_runtime(DUNNING_POLICY=str(tmp_path / "policy.toml"))
    client = falcon.testing.TestClient(create_app(runtime))
    customer = {"id": "cus_test_1", "object": "customer", "email": "someone-else@example.com",
                "metadata": {"owner_email": "real-owner@example.com"}}
    post(runtime, client, fx.event("customer.created", customer, T0 - DAY))
    post(runtime, client, fx.failed())
    assert [e["recipient"] for e in fx.emails(runtime)] == ["real-owner@example.com"]


def test_a_price_with_its_own_schedule_follows_it(make_runtime, tmp_path):
    from config.settings import PROJECT_ROOT
    policy = (PROJECT_ROOT / "config" / "policy.toml").read_text() + """
[schedules.gentle]
prices = ["price_gentle"]
disrupt_after_days = 30
steps = [
  { day = 0, email = "payment-failed" },
  { day = 10, email = "reminder" },
  { day = 20, email = "disruption-warning", action = "schedule_disruption" },
  { day = 30, email = "service-disrupted", action = "disrupt" },
]
"""
    (tmp_path / "policy.toml").write_text(policy)
    runtime = make_runtime(DUNNING_POLICY=str(tmp_path / "policy.toml"))
    client = falcon.testing.TestClient(create_app(runtime))
    post(runtime, client, fx.failed("in_gentle", price="price_gentle"))
    post(runtime, client, fx.failed("in_plain", subscription="sub_other"))
    fx.tick(runtime, T0 + 7 * DAY)
    assert fx.templates(runtime, invoice_id="in_gentle") == ["payment-failed"]
    # one customer: both day-0 steps fell due together and share one email (issue 14)
    [day0] = [e for e in fx.emails(runtime) if e["template"] == "payment-failed"]
    assert day0["invoice_ids"] == "in_gentle,in_plain"
    assert fx.templates(runtime, invoice_id="in_plain") == ["reminder", "disruption-warning"]
    gentle = fx.case_of(runtime, "in_gentle")
    assert gentle["schedule"] == "gentle" and gentle["next_step_at"] == fx.at(T0 + 10 * DAY)
    fx.tick(runtime, T0 + 21 * DAY)
    assert fx.case_of(runtime, "in_gentle")["disrupt_at"] == fx.at(T0 + 30 * DAY)


@pytest.mark.parametrize("event_type, end_state", [
    ("invoice.voided", "voided"),
    ("invoice.marked_uncollectible", "uncollectible"),
])
def test_a_voided_or_written_off_invoice_ends_its_case_and_its_reminders(web, event_type, end_state):
    runtime, client = web
    post(runtime, client, fx.failed())
    post(runtime, client, fx.ended(event_type, created=T0 + 2 * DAY))
    fx.tick(runtime, T0 + 20 * DAY)
    case = fx.case_of(runtime)
    assert case["state"] == end_state and case["next_step_at"] is None
    assert fx.templates(runtime) == ["payment-failed"]


def test_a_deleted_subscription_voids_the_cases_of_its_invoices_only(web):
    runtime, client = web
    post(runtime, client, fx.failed("in_a", subscription="sub_gone"))
    post(runtime, client, fx.failed("in_b", subscription="sub_gone"))
    post(runtime, client, fx.failed("in_c", subscription="sub_kept"))
    post(runtime, client, fx.subscription_deleted("sub_gone", created=T0 + DAY))
    assert {c["invoice_id"]: c["state"] for c in rows(runtime, "cases")} == \
           {"in_a": "voided", "in_b": "voided", "in_c": "failing"}
    fx.tick(runtime, T0 + 3 * DAY)
    # one customer: the three day-0 steps share one email (issue 14); the voided invoices left it
    [day0] = [e for e in fx.emails(runtime) if e["template"] == "payment-failed"]
    assert (day0["invoice_id"], day0["invoice_ids"], day0["status"]) == ("in_c", None, "sent")
    assert "NUM-in_a" not in day0["body_text"] and "NUM-in_b" not in day0["body_text"]
    assert fx.templates(runtime, invoice_id="in_c") == ["payment-failed", "reminder"]


def test_an_event_for_an_ended_case_is_logged_and_ignored_not_applied(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    post(runtime, client, fx.ended("invoice.voided", created=T0 + DAY))
    late_paid = fx.paid(created=T0 + 2 * DAY)
    post(runtime, client, late_paid)
    case = fx.case_of(runtime)
    assert case["state"] == "voided" and event_status(runtime, late_paid) == "ignored"
    assert [t[2] for t in fx.transitions(runtime, case["id"])] == ["opened", "invoice_voided"]
    assert fx.templates(runtime) == ["payment-failed"]


def test_an_invoice_update_carrying_a_final_status_ends_the_case(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    post(runtime, client, fx.event("invoice.updated", fx.invoice(status="paid"), T0 + DAY))
    assert fx.case_of(runtime)["state"] == "recovered"
    assert fx.templates(runtime) == ["payment-failed", "payment-received"]


def test_the_scheduler_finds_due_cases_with_an_indexed_range_query(runtime):
    from sqlalchemy import text
    with runtime.db.engine.connect() as conn:
        plan = " ".join(str(r) for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT id FROM cases WHERE next_step_at <= '2026-01-01' ORDER BY next_step_at")))
    assert "cases_due" in plan


@pytest.mark.slow
def test_shuffled_triplicated_events_on_concurrent_workers_give_the_emails_of_one_in_order_delivery(make_runtime):
    """PostgreSQL, 8 worker threads: every event delivered 3 times in random order, ticks enqueued 3 times."""
    import random

    from worker.scheduling.due_steps import enqueue_due_steps
    from worker.intake.event_store import parse_envelope, store_event
    runtime = make_runtime(db="postgres")
    rng = random.Random(7)
    invoices = [f"in_conc_{n:03d}" for n in range(30)]
    paid_later = set(invoices[::2])

    def deliver_all(events: list[dict]) -> None:
        fx.know_owner(runtime, events[0])  # every invoice here belongs to cus_test_1 (owner of record)
        copies = [e for e in events for _ in range(3)]
        rng.shuffle(copies)
        for evt in copies:
            envelope = parse_envelope(json.dumps(evt))
            store_event(runtime.db, envelope, known_type=True)
            runtime.actors.process_event.send(envelope.id)
        fx.drain_queues(runtime, ("events", "steps"), timeout=120, threads=8)

    def tick_thrice(moment: int) -> None:
        for _ in range(3):
            enqueue_due_steps(runtime, fx.at(moment))
        fx.drain_queues(runtime, ("steps",), timeout=120, threads=8)
        fx.drain_queues(runtime, ("emails",), timeout=120, threads=8)  # disruption waits for delivered mail

    failures = [fx.failed(inv, created=T0 + k * 3600, subscription=f"sub_{inv}", attempt_count=k + 1,
                          next_payment_attempt=T0 + (k + 1) * DAY)
                for inv in invoices for k in range(3)]
    deliver_all(failures)
    tick_thrice(T0 + 3 * DAY)
    deliver_all([fx.paid(inv, created=T0 + 4 * DAY, subscription=f"sub_{inv}") for inv in paid_later])
    tick_thrice(T0 + 20 * DAY)  # late: catches up with the warning only, the date moves to day 23 (issue 12)
    tick_thrice(T0 + 21 * DAY)  # the final notice, two days before the moved date
    tick_thrice(T0 + 23 * DAY)

    assert {e["status"] for e in rows(runtime, "events")} == {"processed"}
    from sqlalchemy import select

    from worker.infra.db import about_case
    emails_t = runtime.db.table("emails")
    for inv in invoices:
        expected = (["payment-failed", "reminder", "payment-received"] if inv in paid_later else STEP_TEMPLATES)
        case = fx.case_of(runtime, inv)
        # every invoice here is cus_test_1's: a step's email may be an account email naming another
        # invoice first (issue 14), so the invoice's story is the emails about it or covering its steps
        with runtime.db.engine.connect() as conn:
            story = conn.execute(select(emails_t.c.template).where(about_case(emails_t, inv, case["id"]))
                                 .order_by(emails_t.c.created_at, emails_t.c.id)).scalars().all()
        assert story == expected, inv
        assert case["first_failed_at"] == fx.at(T0) and case["attempt_count"] == 3
        account_notices = fx.notices(runtime, account_id=f"sub_{inv}")
        assert account_notices == ([] if inv in paid_later else ["service.disruption_scheduled", "service.disrupted"])


# -- a late, older payment_failed for a subscription already deleted ---------------------------
def test_a_failure_delivered_after_its_subscription_was_deleted_starts_no_dunning(any_runtime):
    assert deliver(any_runtime, subscription_deleted("sub_test_1", "cus_test_1", created=T0 + DAY)) == "processed"
    deliver(any_runtime, failed("in_test_1", created=T0))
    tick(any_runtime, T0 + 20 * DAY)

    case = case_of(any_runtime)
    assert case is None or case["state"] == "voided"
    assert templates(any_runtime) == []
    assert notices(any_runtime) == []


def test_on_postgres_a_failure_racing_the_deletion_of_its_subscription_waits_for_it_and_ends_voided(
        make_runtime):
    runtime = make_runtime(db="postgres")
    runtime.db.tables
    deliver(runtime, fc.subscription("sub_test_1", "cus_test_1", status="past_due"))
    raw = subscription_deleted("sub_test_1", "cus_test_1", created=T0 + DAY)
    deletion = StripeEvent(id=raw["id"], type=raw["type"], created=raw["created"], api_version=None,
                           livemode=False, payload=raw)
    outcome: dict = {}

    with runtime.db.transaction() as conn:  # the deletion's transaction, not committed yet
        ctx = context_in(runtime=runtime, conn=conn, now=utcnow(), event=deletion)
        subscriptions.deleted(ctx, deletion)  # no case yet: nothing to void
        failure = failed(created=T0)  # built here: a payload missing from ../shared skips, not in a thread
        racer = threading.Thread(target=lambda: outcome.update(status=deliver(runtime, failure)))
        racer.start()
        racer.join(1.5)
        assert racer.is_alive(), "the failure must wait for the subscription row"
    racer.join(30)

    case = case_of(runtime)
    assert case is not None and case["state"] == "voided"
    assert templates(runtime) == [] and notices(runtime) == []


# -- an older final status never overwrites a newer one ----------------------------------------
def test_an_older_write_off_delivered_after_the_payment_leaves_the_invoice_paid(any_runtime):
    deliver(any_runtime, failed("in_test_1", created=T0))
    deliver(any_runtime, paid("in_test_1", created=T0 + 5 * DAY))
    deliver(any_runtime, ended("invoice.marked_uncollectible", created=T0 + 4 * DAY))

    assert rows(any_runtime, "invoices", id="in_test_1")[0]["status"] == "paid"
    assert case_of(any_runtime)["state"] == "recovered"
