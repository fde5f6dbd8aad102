"""Issue 12: never disrupt a paying, unwarned or unreachable owner; never mail anyone but the owner.

Each test is one acceptance point of the issue, on SQLite and on PostgreSQL, through the real
pipeline (webhook store -> processing -> handlers -> outbox; the scheduler's step job as of an
instant). Only Stripe is faked, at its HTTP boundary (tests/support/fake_stripe.py).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from tests.support import card_events as fc
from tests.support import dunning as fx
from tests.support.fake_stripe import API_KEY
from tests.support.dunning import DAY, T0, case_of, deliver, failed
from tests.support.dunning import open_case
from tests.support.helpers import admin_client
from tests.support.helpers import drain, post_event, rows
from worker.pure.clock import to_unix, utcnow
from worker.delivery.email_context import format_day


def _notice_bodies(runtime, type_: str | None = None) -> list[dict]:
    found = sorted(rows(runtime, "platform_notices"), key=lambda r: (r["account_id"], r["seq"]))
    return [json.loads(n["body"]) for n in found if type_ is None or n["type"] == type_]


# -- 1. verify at Stripe before every consequential step ---------------------------------------
def test_an_invoice_paid_at_stripe_without_a_webhook_is_recovered_and_never_disrupted(stripe_runtime, fake_stripe):
    runtime = stripe_runtime
    fake_stripe.add_subscription("sub_owner", "cus_owner")
    open_case(runtime, fake_stripe, "in_quiet")
    fx.tick(runtime, T0 + 7 * DAY)  # reminder, warning: Stripe still says open
    assert case_of(runtime, "in_quiet")["state"] == "disruption_scheduled"
    # paid at Stripe (a retry, the hosted page...) and the invoice.paid webhook never arrives
    fake_stripe.invoices["in_quiet"].update(status="paid", amount_paid=12000, amount_remaining=0)
    fx.tick(runtime, T0 + 20 * DAY)

    case = case_of(runtime, "in_quiet")
    assert case["state"] == "recovered" and case["next_step_at"] is None
    assert "service.disrupted" not in fx.notices(runtime)
    assert fx.notices(runtime)[-1] == "service.disruption_cancelled"
    templates = fx.templates(runtime, invoice_id="in_quiet")
    assert "service-disrupted" not in templates and "final-notice" not in templates
    assert templates[-1] == "payment-received"
    assert fx.transitions(runtime, case["id"])[-1] == ("disruption_scheduled", "recovered", "invoice_paid")
    ended = [t for t in rows(runtime, "case_transitions", case_id=case["id"]) if t["to_state"] == "recovered"]
    assert ended[0]["event_id"] == "verified-at-stripe"
    assert rows(runtime, "invoices", id="in_quiet")[0]["status"] == "paid"


def test_a_disrupt_step_waits_while_stripe_cannot_be_asked_and_runs_once_it_answers(stripe_runtime, fake_stripe):
    runtime = stripe_runtime
    fake_stripe.add_subscription("sub_owner", "cus_owner")
    open_case(runtime, fake_stripe, "in_dark")
    fx.tick(runtime, T0 + 12 * DAY)
    fake_stripe.unavailable = True
    fx.tick_late(runtime, T0 + 14 * DAY)
    case = case_of(runtime, "in_dark")
    assert case["state"] == "disruption_scheduled" and case["verify_failures"] == 1
    assert case["next_step_at"] > fx.at(T0 + 14 * DAY)  # retried with backoff, never disrupted unverified
    assert "service.disrupted" not in fx.notices(runtime)
    fake_stripe.unavailable = False
    fx.tick(runtime, T0 + 15 * DAY)
    assert case_of(runtime, "in_dark")["state"] == "disrupted"
    assert fx.notices(runtime).count("service.disrupted") == 1


def test_a_successful_immediate_retry_recovers_the_case_at_once_and_nothing_is_disrupted(stripe_runtime, fake_stripe):
    runtime = stripe_runtime
    fake_stripe.add_subscription("sub_owner", "cus_owner", default_payment_method="pm_old")
    fake_stripe.add_card("pm_new", "cus_owner", brand="mastercard", last4="5555", exp_month=8, exp_year=2031)
    fake_stripe.add_customer("cus_owner", default_payment_method="pm_new")
    open_case(runtime, fake_stripe, "in_retry")
    deliver(runtime, fc.pm_attached("pm_new", "cus_owner", brand="mastercard", last4="5555", exp=(8, 2031),
                                    created=T0 + DAY))
    deliver(runtime, fc.customer_updated("cus_owner", default_pm="pm_new", previous_default="pm_old",
                                         created=T0 + DAY + 1))
    drain(runtime)
    assert case_of(runtime, "in_retry")["state"] == "recovered"  # no invoice.paid webhook came
    fx.tick(runtime, T0 + 30 * DAY)
    assert fx.notices(runtime, invoice_id="in_retry") == []
    assert fx.templates(runtime, invoice_id="in_retry") == ["payment-failed", "payment-received"]


# -- 2. a warning period that is real ----------------------------------------------------------
def test_a_failure_created_20_days_ago_warns_once_moves_the_date_and_every_stated_date_is_ahead(any_runtime):
    runtime = any_runtime
    now = utcnow().replace(microsecond=0)
    created = to_unix(now) - 20 * DAY
    deliver(runtime, failed("in_late", created=created, next_payment_attempt=created + 3 * DAY))
    fx.tick_late(runtime, now)  # the first scheduler pass after the backfill

    assert fx.templates(runtime) == ["payment-failed", "disruption-warning"]  # one dunning email + day 0
    case = case_of(runtime, "in_late")
    assert case["disrupt_at"] >= now + timedelta(days=3)
    (scheduled,) = _notice_bodies(runtime, "service.disruption_scheduled")
    assert scheduled["disrupt_at"] >= to_unix(now + timedelta(days=3))
    day0 = fx.emails(runtime, template="payment-failed")[0]
    assert format_day(fx.at(created + 3 * DAY)) not in day0["body_text"]  # a past retry date is never shown

    sent_at = {e["id"]: now for e in fx.emails(runtime)}
    moment = now
    for _ in range(8 * 4):  # a scheduler passing every 6 hours for 8 days
        moment += timedelta(hours=6)
        fx.tick_late(runtime, moment)
        account = rows(runtime, "accounts", id="sub_test_1")[0]
        for email in fx.emails(runtime):
            if email["id"] in sent_at:
                continue
            sent_at[email["id"]] = moment
            if email["template"] in ("disruption-warning", "final-notice"):
                assert account["disrupt_at"] > moment, email["template"]
                assert format_day(account["disrupt_at"]) in email["body_text"]
        if "service.disrupted" not in fx.notices(runtime):
            assert account["status"] != "disrupted"
    assert fx.templates(runtime) == ["payment-failed", "disruption-warning", "final-notice", "service-disrupted"]
    dunning = [sent_at[e["id"]] for e in fx.emails(runtime) if e["template"] != "payment-failed"]
    assert all(b - a >= timedelta(hours=20) for a, b in zip(dunning, dunning[1:]))
    disrupted = _notice_bodies(runtime, "service.disrupted")[0]
    assert disrupted["disrupt_at"] >= to_unix(now + timedelta(days=3))
    assert dunning[-1] >= now + timedelta(days=3)  # nothing disrupted before the warning period ended


def test_a_disruption_waits_for_the_warning_to_be_delivered(any_runtime):
    """An undelivered warning (the mail provider down) holds the disruption; its delivery moves the date."""
    runtime = any_runtime
    deliver(runtime, failed("in_slow", created=T0))
    fx.tick(runtime, T0 + 3 * DAY)
    from worker.scheduling.due_steps import enqueue_due_steps
    enqueue_due_steps(runtime, fx.at(T0 + 7 * DAY))
    fx.drain_queues(runtime, ("steps",))  # the warning is queued but not delivered
    enqueue_due_steps(runtime, fx.at(T0 + 14 * DAY))
    fx.drain_queues(runtime, ("steps",))
    assert case_of(runtime, "in_slow")["state"] == "disruption_scheduled"
    assert "service.disrupted" not in fx.notices(runtime)


# -- 3 and 4. owner of record only; unreachable owners are held --------------------------------
def test_an_owner_without_an_address_gets_no_mail_is_held_and_announced_to_the_platform(any_runtime):
    runtime = any_runtime
    assert deliver(runtime, fc.customer_created("cus_test_1", email=None)) == "processed"
    deliver(runtime, failed("in_nomail", created=T0, email="snapshot@example.com"))  # customer_email snapshot
    fx.tick(runtime, T0 + 30 * DAY)

    assert rows(runtime, "emails") == []  # no email to anyone, the snapshot least of all
    case = case_of(runtime, "in_nomail")
    assert case["owner_unreachable"] == 1 and case["state"] == "failing"
    assert fx.notices(runtime) == ["service.owner_unreachable"]
    assert "service.disrupted" not in fx.notices(runtime)
    assert rows(runtime, "customers", id="cus_test_1")[0]["email"] is None

    from worker.cli import main
    cli = CliRunner()
    listed = cli.invoke(main, ["cases", "list", "--unreachable", "--json"], env=_cli_env(runtime))
    assert listed.exit_code == 0, listed.output
    assert [c["invoice_id"] for c in json.loads(listed.output)] == ["in_nomail"]
    stats = cli.invoke(main, ["stats", "--json"], env=_cli_env(runtime))
    assert json.loads(stats.output)["owner_unreachable_cases"] == 1
    from worker.observe.metrics import render
    assert b"dunning_cases_owner_unreachable 1.0" in render(runtime)[0]

    released = cli.invoke(main, ["cases", "release", "in_nomail", "--by", "ops@example.com",
                                 "--reason", "platform confirmed the owner left"], env=_cli_env(runtime))
    assert released.exit_code == 0, released.output
    assert rows(runtime, "case_releases")[0]["released_by"] == "ops@example.com"
    fx.tick(runtime, T0 + 60 * DAY)
    assert case_of(runtime, "in_nomail")["state"] == "disrupted"
    assert rows(runtime, "emails") == []


def test_an_owner_who_gets_an_address_again_is_no_longer_held(any_runtime):
    runtime = any_runtime
    deliver(runtime, fc.customer_created("cus_test_1", email=None))
    deliver(runtime, failed("in_back", created=T0))
    fx.tick(runtime, T0 + 10 * DAY)
    assert case_of(runtime, "in_back")["state"] == "failing"
    deliver(runtime, fc.customer_created("cus_test_1", email="new-owner@example.com", created=T0 + 10 * DAY))
    fx.tick(runtime, T0 + 11 * DAY + 1)
    case = case_of(runtime, "in_back")
    assert case["owner_unreachable"] == 0 and case["state"] == "disruption_scheduled"
    assert case["disrupt_at"] >= fx.at(T0 + 14 * DAY)
    (warning,) = fx.emails(runtime, template="disruption-warning")
    assert warning["recipient"] == "new-owner@example.com"


def test_policy_proceed_keeps_the_schedule_for_an_unreachable_owner(make_runtime, tmp_path):
    from config.settings import PROJECT_ROOT
    policy = (PROJECT_ROOT / "config" / "policy.toml").read_text().replace('unreachable = "hold"',
                                                                           'unreachable = "proceed"')
    (tmp_path / "policy.toml").write_text(policy)
    runtime = make_runtime(DUNNING_POLICY=str(tmp_path / "policy.toml"))
    deliver(runtime, fc.customer_created("cus_test_1", email=None))
    deliver(runtime, failed("in_go", created=T0))
    fx.tick(runtime, T0 + 15 * DAY)
    assert case_of(runtime, "in_go")["state"] == "disrupted"
    assert fx.notices(runtime)[0] == "service.owner_unreachable" and rows(runtime, "emails") == []


def _cli_env(runtime) -> dict[str, str]:
    from tests.support.services import base_env
    env = base_env(runtime.settings.var_dir.parent)
    env["DATABASE_URL"] = runtime.settings.database_url
    env["DUNNING_POLICY"] = str(runtime.settings.dunning_policy)
    return env


# -- 5. one retry per card version ----------------------------------------------------------
def test_a_new_expiry_on_a_declined_card_retries_exactly_once_more(stripe_runtime, fake_stripe):
    runtime = stripe_runtime
    fake_stripe.add_subscription("sub_owner", "cus_owner", default_payment_method="pm_card")
    fake_stripe.add_card("pm_card", "cus_owner", last4="4242", exp_month=8, exp_year=2026, declines=True)
    fake_stripe.add_customer("cus_owner", default_payment_method="pm_card")
    open_case(runtime, fake_stripe, "in_card")
    deliver(runtime, fc.pm_attached("pm_card", "cus_owner", exp=(8, 2026), created=T0 + DAY))
    deliver(runtime, fc.customer_updated("cus_owner", default_pm="pm_card", previous_default="pm_gone",
                                         created=T0 + DAY + 1))
    drain(runtime)
    pays = lambda: [r for r in fake_stripe.posts("/pay") if not r.replayed]  # noqa: E731
    assert len(pays()) == 1 and rows(runtime, "card_retries")[0]["status"] == "declined"

    fake_stripe.payment_methods["pm_card"]["card"].update(exp_month=9, exp_year=2029)
    fake_stripe.declining.discard("pm_card")
    renewed = fc.pm_updated("pm_card", "cus_owner", event_type="payment_method.automatically_updated",
                            exp=(9, 2029), previous_card={"exp_month": 8, "exp_year": 2026}, created=T0 + 2 * DAY)
    client = admin_client(runtime)
    for _ in range(3):
        assert post_event(client, renewed).status_code == 200
        drain(runtime)
    assert len(pays()) == 2
    assert case_of(runtime, "in_card")["state"] == "recovered"


def test_at_most_three_immediate_retries_per_invoice_a_day(stripe_runtime, fake_stripe):
    runtime = stripe_runtime
    fake_stripe.add_subscription("sub_owner", "cus_owner", default_payment_method="pm_flap")
    fake_stripe.add_card("pm_flap", "cus_owner", declines=True)
    fake_stripe.add_customer("cus_owner", default_payment_method="pm_flap")
    open_case(runtime, fake_stripe, "in_flap")
    deliver(runtime, fc.customer_updated("cus_owner", default_pm="pm_flap", previous_default="pm_gone",
                                         created=T0 + DAY))
    for n, year in enumerate(range(2030, 2036)):
        deliver(runtime, fc.pm_updated("pm_flap", "cus_owner", event_type="payment_method.automatically_updated",
                                       exp=(1, year), previous_card={"exp_year": year - 1}, created=T0 + DAY + 10 + n))
    drain(runtime)
    assert len(rows(runtime, "card_retries", invoice_id="in_flap")) == 3
    assert len([r for r in fake_stripe.posts("/pay") if not r.replayed]) == 3


# -- 7. re-drive what failed transiently; fail fast what never will ------------------------------
def test_events_failed_while_stripe_answered_503_for_two_hours_end_processed_without_an_operator(
        stripe_runtime, fake_stripe):
    from worker.intake.processing import process_event
    from worker.intake.reconciler import exhausted_count, redrive_failed
    runtime = stripe_runtime
    fake_stripe.add_customer("cus_test_1")
    fake_stripe.unavailable = True
    evts = [failed(f"in_out{n}", created=T0 + n, subscription=f"sub_out{n}") for n in range(3)]
    from worker.intake.event_store import parse_envelope, store_event
    for evt in evts:
        store_event(runtime.db, parse_envelope(json.dumps(evt)), known_type=True)
        with pytest.raises(Exception):
            process_event(runtime, evt["id"])
    failed_rows = rows(runtime, "events", status="failed")
    assert len(failed_rows) == 3 and all(r["failed_transient"] for r in failed_rows)

    start = utcnow()
    redriven = 0
    for minutes in range(10, 121, 10):  # two hours of scheduler time, Stripe still down
        for event_id in _redrive(runtime, start + timedelta(minutes=minutes), redrive_failed):
            redriven += 1
            with pytest.raises(Exception):
                process_event(runtime, event_id)
    assert redriven >= 3 and {r["status"] for r in rows(runtime, "events")} == {"failed"}
    fake_stripe.unavailable = False
    for event_id in _redrive(runtime, start + timedelta(hours=4), redrive_failed):
        process_event(runtime, event_id)
    assert {r["status"] for r in rows(runtime, "events")} == {"processed"}
    assert len(rows(runtime, "cases")) == 3

    # past Stripe's 3-day window an event is left for `dunning events replay --failed`, and counted
    fake_stripe.unavailable = True
    late = failed("in_old", created=T0 + 9, customer="cus_old", subscription="sub_old")  # an unknown owner
    store_event(runtime.db, parse_envelope(json.dumps(late)), known_type=True)
    with pytest.raises(Exception):
        process_event(runtime, late["id"])
    assert _redrive(runtime, start + timedelta(days=3, hours=1), redrive_failed) == []
    with runtime.db.engine.connect() as conn:
        assert exhausted_count(conn, runtime.db, start + timedelta(days=3, hours=1)) == 1


def _redrive(runtime, moment, redrive_failed) -> list[str]:
    """The reconciler's pass as of `moment`; return the event ids it enqueued (taken off the stub queue)."""
    redrive_failed(runtime, moment)
    queue = runtime.broker.queues.get("events")
    ids = []
    while queue is not None and not queue.empty():
        import dramatiq
        message = dramatiq.Message.decode(queue.get_nowait())
        ids.append(message.args[0])
        queue.task_done()
    return ids


@pytest.mark.parametrize("change", [
    {"amount_due": "12.50"}, {"amount_due": float("nan")}, {"amount_due": {"value": 1250}},
], ids=["decimal-string", "nan", "dict"])
def test_a_signed_event_with_a_value_of_the_wrong_form_fails_on_its_first_try_with_a_one_line_reason(
        any_runtime, change):
    from handlers.context import PermanentEventError
    from worker.intake.event_store import parse_envelope, store_event
    from worker.intake.processing import process_event
    from worker.intake.reconciler import redrive_failed
    evt = failed("in_bad", created=T0)
    evt["data"]["object"].update(change)
    body = json.dumps(evt)
    store_event(any_runtime.db, parse_envelope(body), known_type=True)
    with pytest.raises(PermanentEventError):
        process_event(any_runtime, evt["id"])
    (row,) = rows(any_runtime, "events", id=evt["id"])
    assert row["status"] == "failed" and row["attempts"] == 1 and not row["failed_transient"]
    assert "\n" not in row["last_error"] and "cannot be read" in row["last_error"]
    assert redrive_failed(any_runtime, utcnow() + timedelta(days=1)) == 0
    assert rows(any_runtime, "cases") == []


def test_a_year_10000_created_fails_permanently_at_once(any_runtime):
    from handlers.context import PermanentEventError
    from worker.intake.event_store import parse_envelope, store_event
    from worker.intake.processing import process_event
    from worker.intake.event_store import InvalidEvent
    with pytest.raises(InvalidEvent, match="created"):  # the envelope's own created: refused at the door (400)
        parse_envelope(json.dumps(failed("in_future_envelope", created=253402300800)))
    evt = failed("in_future", created=T0, next_payment_attempt=253402300800)  # a signed value inside the object
    store_event(any_runtime.db, parse_envelope(json.dumps(evt)), known_type=True)
    with pytest.raises(PermanentEventError):
        process_event(any_runtime, evt["id"])
    (row,) = rows(any_runtime, "events", id=evt["id"])
    assert row["status"] == "failed" and row["attempts"] == 1 and "\n" not in row["last_error"]


def test_stripe_api_key_is_what_turns_verification_on(make_runtime):
    from worker.stripe.case_facts import enabled
    assert not enabled(make_runtime())
    assert enabled(make_runtime(STRIPE_API_KEY=API_KEY))
