"""The disruption timeline per account, decided in the database: which platform notices, in which order.

(Their signed delivery to the platform is tested with the notice sender; here the decisions are
checked on the platform_notices rows, in their per-account `seq` order.)
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support import dunning as fx
from tests.support.dunning import (
    DAY,
    T0,
    at,
    case_of,
    deliver,
    emails,
    ended,
    failed,
    notices,
    paid,
    post,
    templates,
    tick,
)
from tests.support.helpers import rows
from worker.pure.clock import to_unix
from worker.delivery.email_context import format_day


def account(runtime, account_id: str = "sub_test_1") -> dict:
    return rows(runtime, "accounts", id=account_id)[0]


def bodies(runtime) -> list[dict]:
    return [json.loads(n["body"]) for n in sorted(rows(runtime, "platform_notices"), key=lambda r: r["seq"])]


@pytest.fixture
def two_unpaid_by_day_9(web):
    """Two invoices of one subscription, failed on day 0 (in_a) and day 2 (in_b), the scheduler run
    to day 9: (runtime, client)."""
    runtime, client = web
    post(runtime, client, fx.failed("in_a", created=T0))
    post(runtime, client, fx.failed("in_b", created=T0 + 2 * DAY))
    fx.tick(runtime, T0 + 7 * DAY)
    fx.tick(runtime, T0 + 9 * DAY)
    return runtime, client


class TestOneInvoiceOnBothDatabases:
    def test_unpaid_through_day_7_and_14_then_paid_gives_scheduled_disrupted_restored_once_each_in_order(self, any_web):
        runtime, client = any_web
        post(runtime, client, fx.failed())
        fx.tick(runtime, T0 + 7 * DAY)
        assert fx.notices(runtime) == ["service.disruption_scheduled"]
        assert account(runtime)["status"] == "disruption_scheduled"
        assert account(runtime)["disrupt_at"] == fx.at(T0 + 14 * DAY)
        assert fx.case_of(runtime)["disrupt_at"] == fx.at(T0 + 14 * DAY)
        fx.tick(runtime, T0 + 7 * DAY)
        fx.tick(runtime, T0 + 14 * DAY)
        fx.tick(runtime, T0 + 14 * DAY)
        assert account(runtime)["status"] == "disrupted"
        post(runtime, client, fx.paid(created=T0 + 15 * DAY))
        fx.tick(runtime, T0 + 30 * DAY)
        assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted", "service.restored"]
        assert [n["seq"] for n in sorted(rows(runtime, "platform_notices"), key=lambda r: r["seq"])] == [1, 2, 3]
        scheduled, disrupted, restored = bodies(runtime)
        assert scheduled["disrupt_at"] == to_unix(fx.at(T0 + 14 * DAY))
        assert (scheduled["customer"], scheduled["subscription"], scheduled["invoice"]) == \
               ("cus_test_1", "sub_test_1", "in_test_1")
        assert len({scheduled["id"], disrupted["id"], restored["id"]}) == 3
        assert account(runtime)["status"] == "active"
        assert fx.templates(runtime)[-1] == "payment-received"  # one message (issue 14): received + restored
        assert "service-restored" not in fx.templates(runtime)


def test_paid_on_day_10_cancels_the_disruption_once_and_nothing_more_is_sent(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    fx.tick(runtime, T0 + 7 * DAY)
    post(runtime, client, fx.paid(created=T0 + 10 * DAY))
    post(runtime, client, fx.ended("invoice.payment_succeeded", created=T0 + 10 * DAY))
    fx.tick(runtime, T0 + 12 * DAY)
    fx.tick(runtime, T0 + 30 * DAY)
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disruption_cancelled"]
    assert fx.templates(runtime) == ["payment-failed", "reminder", "disruption-warning", "payment-received"]
    assert account(runtime)["status"] == "active" and account(runtime)["disrupt_at"] is None


def test_paid_before_day_7_announces_nothing_to_the_platform(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    post(runtime, client, fx.paid(created=T0 + 2 * DAY))
    fx.tick(runtime, T0 + 30 * DAY)
    assert fx.notices(runtime) == []
    assert fx.templates(runtime) == ["payment-failed", "payment-received"]


def test_two_unpaid_invoices_of_one_subscription_share_one_timeline_and_restore_only_when_both_are_paid(
        two_unpaid_by_day_9):
    runtime, client = two_unpaid_by_day_9
    # the earliest date wins, and is the one the second invoice's emails show
    assert fx.notices(runtime) == ["service.disruption_scheduled"]
    assert account(runtime)["disrupt_at"] == fx.at(T0 + 14 * DAY)
    assert fx.case_of(runtime, "in_b")["disrupt_at"] == fx.at(T0 + 14 * DAY)
    fx.tick(runtime, T0 + 14 * DAY)
    fx.tick(runtime, T0 + 17 * DAY)
    assert {fx.case_of(runtime, i)["state"] for i in ("in_a", "in_b")} == {"disrupted"}
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted"]
    post(runtime, client, fx.paid("in_a", created=T0 + 18 * DAY))
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted"]
    assert account(runtime)["status"] == "disrupted"
    assert "service-restored" not in fx.templates(runtime, invoice_id="in_a")
    post(runtime, client, fx.paid("in_b", created=T0 + 19 * DAY))
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted", "service.restored"]
    assert account(runtime)["status"] == "active"
    assert fx.templates(runtime, invoice_id="in_b")[-1] == "payment-received"  # says restored (issue 14)
    assert "service-restored" not in fx.templates(runtime)


def test_paying_the_earliest_invoice_before_the_date_moves_the_date_to_the_next_one(two_unpaid_by_day_9):
    runtime, client = two_unpaid_by_day_9
    post(runtime, client, fx.paid("in_a", created=T0 + 10 * DAY))
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disruption_scheduled"]
    assert bodies(runtime)[-1]["disrupt_at"] == to_unix(fx.at(T0 + 16 * DAY))
    assert account(runtime)["disrupt_at"] == fx.at(T0 + 16 * DAY)
    fx.tick(runtime, T0 + 14 * DAY)
    assert account(runtime)["status"] == "disruption_scheduled"
    fx.tick(runtime, T0 + 16 * DAY)
    assert account(runtime)["status"] == "disrupted"
    assert fx.notices(runtime)[-1] == "service.disrupted"


def test_a_voided_invoice_cancels_its_disruption_before_the_date_and_restores_service_after_it(web):
    runtime, client = web
    post(runtime, client, fx.failed("in_a", subscription="sub_a"))
    post(runtime, client, fx.failed("in_b", subscription="sub_b"))
    fx.tick(runtime, T0 + 7 * DAY)
    post(runtime, client, fx.ended("invoice.voided", "in_a", subscription="sub_a", created=T0 + 8 * DAY))
    fx.tick(runtime, T0 + 14 * DAY)
    post(runtime, client, fx.ended("invoice.voided", "in_b", subscription="sub_b", created=T0 + 15 * DAY))
    assert fx.notices(runtime, account_id="sub_a") == ["service.disruption_scheduled",
                                                       "service.disruption_cancelled"]
    assert fx.notices(runtime, account_id="sub_b") == ["service.disruption_scheduled", "service.disrupted",
                                                       "service.restored"]
    assert "payment-received" not in fx.templates(runtime)


def test_a_write_off_after_disruption_leaves_the_service_disrupted(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    fx.tick(runtime, T0 + 14 * DAY)
    post(runtime, client, fx.ended("invoice.marked_uncollectible", created=T0 + 20 * DAY))
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted"]
    assert account(runtime)["status"] == "disrupted"


def test_a_deleted_subscription_cancels_its_scheduled_disruption_once(web):
    runtime, client = web
    post(runtime, client, fx.failed("in_a", created=T0))
    post(runtime, client, fx.failed("in_b", created=T0 + DAY))
    fx.tick(runtime, T0 + 7 * DAY)
    fx.tick(runtime, T0 + 8 * DAY)
    post(runtime, client, fx.subscription_deleted(created=T0 + 9 * DAY))
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disruption_cancelled"]


def test_the_account_status_follows_the_timeline(web):
    from handlers.accounts import status_of_customer
    runtime, client = web

    def show() -> dict:
        with runtime.db.engine.connect() as conn:
            return status_of_customer(conn, runtime.db, "cus_test_1")

    assert show()["status"] == "active" and show()["accounts"] == []
    post(runtime, client, fx.failed())
    assert show()["status"] == "active"
    fx.tick(runtime, T0 + 7 * DAY)
    shown = show()
    assert (shown["status"], shown["disrupt_at"]) == ("disruption_scheduled", "2026-12-02T11:06:40Z")
    assert shown["accounts"][0]["subscription"] == "sub_test_1"
    fx.tick(runtime, T0 + 14 * DAY)
    assert show()["status"] == "disrupted"
    post(runtime, client, fx.paid(created=T0 + 15 * DAY))
    assert show()["status"] == "active"


def test_dunning_accounts_show_prints_the_status_as_json_and_as_text(web, monkeypatch):
    from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET
    from worker.cli import main
    runtime, client = web
    post(runtime, client, fx.failed())
    fx.tick(runtime, T0 + 14 * DAY)
    # the command builds its own runtime from the environment, as in production (last step of this test)
    for key, value in {"DATABASE_URL": runtime.settings.database_url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                       "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["accounts", "show", "cus_test_1", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["customer"], shown["status"], shown["disrupt_at"], shown["disrupted_at"]) == \
           ("cus_test_1", "disrupted", "2026-12-02T11:06:40Z", "2026-12-02T11:06:40Z")
    text = CliRunner().invoke(main, ["accounts", "show", "cus_test_1"]).output
    assert text.startswith("cus_test_1: disrupted") and "sub_test_1" in text


def test_the_fixed_disruption_date_is_shown_in_every_later_email(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    fx.tick(runtime, T0 + 7 * DAY)
    post(runtime, client, fx.failed(created=T0 + 8 * DAY, attempt_count=3, card=("visa", "4242")))
    fx.tick(runtime, T0 + 14 * DAY)
    case = fx.case_of(runtime)
    assert case["disrupt_at"] == fx.at(T0 + 14 * DAY)  # a later attempt did not move it
    by_template = {e["template"]: e for e in fx.emails(runtime)}
    for template in ("disruption-warning", "final-notice"):
        assert "December 2, 2026" in by_template[template]["body_text"], template
        assert "December 2, 2026" in by_template[template]["body_html"], template
    assert "December 2, 2026" not in by_template["reminder"]["body_text"]


def test_a_late_tick_over_two_invoices_announces_the_earliest_date_once_whatever_order_they_run_in(web):
    runtime, client = web
    post(runtime, client, fx.failed("in_a", created=T0))
    post(runtime, client, fx.failed("in_b", created=T0 + 2 * DAY))
    for _ in range(3):  # the step messages of both cases run concurrently, in any order
        fx.tick(runtime, T0 + 9 * DAY)
    assert fx.notices(runtime) == ["service.disruption_scheduled"]
    assert bodies(runtime)[0]["disrupt_at"] == to_unix(fx.at(T0 + 14 * DAY))
    assert {fx.case_of(runtime, i)["disrupt_at"] for i in ("in_a", "in_b")} == {fx.at(T0 + 14 * DAY)}
    fx.tick(runtime, T0 + 20 * DAY)
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted"]
    assert account(runtime)["disrupted_at"] == fx.at(T0 + 14 * DAY)


def test_a_subscription_deleted_after_disruption_does_not_restore_service(web):
    runtime, client = web
    post(runtime, client, fx.failed())
    fx.tick(runtime, T0 + 14 * DAY)
    post(runtime, client, fx.subscription_deleted(created=T0 + 15 * DAY))
    assert fx.case_of(runtime)["state"] == "voided"
    assert fx.notices(runtime) == ["service.disruption_scheduled", "service.disrupted"]
    assert account(runtime)["status"] == "disrupted"


# -- what the payment-received email says after a disruption -----------------------------------
def test_the_payment_received_email_after_a_disruption_does_not_claim_service_was_never_interrupted(any_runtime):
    deliver(any_runtime, failed("in_test_1", created=T0))
    tick(any_runtime, T0 + 15 * DAY)
    assert case_of(any_runtime)["state"] == "disrupted"
    deliver(any_runtime, paid("in_test_1", created=T0 + 16 * DAY))

    (received,) = emails(any_runtime, template="payment-received")
    assert "without interruption" not in received["body_text"]
    assert "restored" in received["body_text"] and "restored" in received["subject"]
    assert "service-restored" not in templates(any_runtime)  # one message (issue 14)


# -- the disruption date an owner reads follows the account's timeline --------------------------
def test_when_paying_one_invoice_moves_the_disruption_date_the_other_invoices_emails_show_the_new_date(
        any_runtime):
    deliver(any_runtime, failed("in_a", created=T0))
    deliver(any_runtime, failed("in_b", created=T0 + 2 * DAY))
    tick(any_runtime, T0 + 9 * DAY)  # a's warning (day 7) then b's (its day 7): the earliest date wins
    assert case_of(any_runtime, "in_b")["state"] == "disruption_scheduled"
    deliver(any_runtime, paid("in_a", created=T0 + 10 * DAY))
    account = rows(any_runtime, "accounts", id="sub_test_1")[0]
    assert account["disrupt_at"] == at(T0 + 16 * DAY)  # b's own date now

    tick(any_runtime, T0 + 14 * DAY + 60)  # b's final notice (its day 12)
    (final,) = emails(any_runtime, template="final-notice", invoice_id="in_b")
    assert format_day(at(T0 + 16 * DAY)) in final["body_text"]
    assert format_day(at(T0 + 14 * DAY)) not in final["body_text"]


def test_paying_one_of_two_disrupted_invoices_thanks_the_owner_without_claiming_service_is_restored(any_runtime):
    deliver(any_runtime, failed("in_a", created=T0))
    deliver(any_runtime, failed("in_b", created=T0 + DAY))
    tick(any_runtime, T0 + 16 * DAY)
    deliver(any_runtime, paid("in_a", created=T0 + 17 * DAY))

    (received,) = emails(any_runtime, template="payment-received", invoice_id="in_a")
    assert "stays disrupted" in received["body_text"] and "stays disrupted" in received["body_html"]
    assert "being restored" not in received["body_text"] and "without interruption" not in received["body_text"]
    assert "service-restored" not in templates(any_runtime)


# -- a written-off invoice that is paid after all ------------------------------------------------
def test_paying_a_written_off_invoice_restores_the_service_it_disrupted_and_thanks_the_owner(any_runtime):
    deliver(any_runtime, failed("in_test_1", created=T0))
    tick(any_runtime, T0 + 15 * DAY)
    deliver(any_runtime, ended("invoice.marked_uncollectible", created=T0 + 20 * DAY))
    assert rows(any_runtime, "accounts", id="sub_test_1")[0]["status"] == "disrupted"

    late_payment = paid("in_test_1", created=T0 + 25 * DAY)
    deliver(any_runtime, late_payment)
    deliver(any_runtime, late_payment)  # a redelivery changes nothing

    assert notices(any_runtime) == ["service.disruption_scheduled", "service.disrupted", "service.restored"]
    assert rows(any_runtime, "accounts", id="sub_test_1")[0]["status"] == "active"
    assert templates(any_runtime).count("payment-received") == 1
    assert templates(any_runtime).count("service-restored") == 0  # said in payment-received (issue 14)
