"""The email outbox: one row per decision, delivered once, through SendGrid or as .eml files."""

from __future__ import annotations

import json
from datetime import timedelta
from email import policy
from email.parser import BytesParser

import pytest
from sqlalchemy import update

from handlers import dedupe_keys
from tests.support.delivery import in_handler, seed_case, settle_outbox
from tests.support.fake_receivers import scripted_server
from tests.support.helpers import drain, rows
from worker.delivery import outbox
from worker.pure.clock import utcnow
from worker.delivery.email_delivery import SendGridSender, deliver_email, sweep_emails

SENDGRID_KEY = "SG.test-key-for-the-suite"


def queue(runtime, template="payment-failed", case_id="dc_test_1", key=dedupe_keys.step_email("dc_test_1", 0),
          extra=None):
    return in_handler(runtime, lambda ctx: ctx.effects.case_email(ctx, template, case_id, key, extra))


def parse_eml(path):
    with open(path, "rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)


# -- the file outbox ----------------------------------------------------------------------
def test_an_email_is_written_as_one_parseable_eml_with_the_dunning_headers(any_runtime):
    runtime = any_runtime
    seed_case(runtime)
    email_id = queue(runtime)
    assert email_id

    drain(runtime)

    [row] = rows(runtime, "emails")
    assert row["status"] == "sent" and row["attempts"] == 1 and row["provider_message_id"]
    files = list(runtime.settings.email_outbox_dir.glob("*.eml"))
    assert [f.name for f in files] == [f"{email_id}.eml"]
    msg = parse_eml(files[0])
    assert msg["To"] == "owner@example.com"
    assert msg["From"] == "Billing <billing@example.com>"
    assert msg["Subject"] == row["subject"] and "\n" not in msg["Subject"]
    assert msg["X-Dunning-Template"] == "payment-failed"
    assert msg["X-Dunning-Invoice"] == "in_test_1"
    assert msg["X-Dunning-Customer"] == "cus_test_1"
    assert msg["Message-ID"] == row["provider_message_id"]
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "$25.00 USD" in text and "$25.00 USD" in html
    assert "Visa ending in 4242" in text


def test_a_duplicate_dedupe_key_adds_nothing(any_runtime):
    runtime = any_runtime
    seed_case(runtime)
    first = queue(runtime)
    second = queue(runtime)
    drain(runtime)
    assert first and second is None
    assert len(rows(runtime, "emails")) == 1
    assert len(list(runtime.settings.email_outbox_dir.glob("*.eml"))) == 1


def test_a_retry_after_a_crash_rewrites_the_same_file_never_a_second(runtime):
    seed_case(runtime)
    email_id = queue(runtime)
    drain(runtime)
    # A worker wrote the file, then died before recording `sent`: the lease has lapsed.
    emails = runtime.db.table("emails")
    with runtime.db.transaction() as conn:
        conn.execute(update(emails).values(status="sending", lease_until=utcnow() - timedelta(minutes=1)))

    assert sweep_emails(runtime, utcnow()) == 1
    drain(runtime)

    [row] = rows(runtime, "emails")
    assert row["status"] == "sent" and row["attempts"] == 2
    assert [f.name for f in runtime.settings.email_outbox_dir.iterdir()] == [f"{email_id}.eml"]


def test_a_row_being_sent_is_not_taken_by_a_second_worker(runtime):
    seed_case(runtime)
    email_id = queue(runtime)
    emails = runtime.db.table("emails")
    with runtime.db.transaction() as conn:
        conn.execute(update(emails).values(status="sending", lease_until=utcnow() + timedelta(minutes=5)))

    assert deliver_email(runtime, email_id) == "sending"
    assert sweep_emails(runtime, utcnow()) == 0
    assert not runtime.settings.email_outbox_dir.exists() or not any(runtime.settings.email_outbox_dir.iterdir())


def test_the_sweeper_picks_up_an_email_whose_message_was_lost(runtime):
    seed_case(runtime)
    in_handler(runtime, lambda ctx: ctx.effects.case_email(ctx, "reminder", "dc_test_1",
                                                                  dedupe_keys.step_email("dc_test_1", 1)))
    runtime.broker.flush_all()  # the broker lost the message
    assert sweep_emails(runtime, utcnow()) == 0  # queued at commit: not again before the lease lapses
    from datetime import timedelta

    from worker.delivery.email_delivery import ENQUEUE_LEASE
    assert sweep_emails(runtime, utcnow() + ENQUEUE_LEASE + timedelta(seconds=1)) == 1
    drain(runtime)
    assert rows(runtime, "emails")[0]["status"] == "sent"


def test_no_valid_recipient_means_no_row(runtime):
    seed_case(runtime, email="owner@example.com\r\nBcc: thief@example.com")
    assert queue(runtime) is None
    assert rows(runtime, "emails") == []


def test_the_recipient_is_the_owner_of_record_only(make_runtime, tmp_path):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        '[recipient]\nsource = "customer.metadata.owner_email"\n'
        '[schedules.default]\ndisrupt_after_days = 14\nsteps = [{ day = 0, email = "payment-failed" }]\n')
    runtime = make_runtime(DUNNING_POLICY=str(policy_file))
    seed_case(runtime, email="someone-else@example.com", customer_metadata={"owner_email": "boss@example.com"})
    queue(runtime)
    assert [r["recipient"] for r in rows(runtime, "emails")] == ["boss@example.com"]


def test_an_unknown_template_is_a_programming_error(runtime):
    seed_case(runtime)
    with pytest.raises(outbox.UnknownTemplate):
        queue(runtime, template="payment-faild")


def test_customer_emails_without_a_case_carry_none_for_the_invoice(runtime):
    seed_case(runtime)
    extra = {"card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2026}}
    email_id = in_handler(runtime, lambda ctx: ctx.effects.customer_email(
        ctx, "card-expiring", "cus_test_1",
        dedupe_keys.card_expiring("cus_test_1", {"payment_method_id": "pm_1", **extra["card"]}), extra))
    drain(runtime)
    msg = parse_eml(runtime.settings.email_outbox_dir / f"{email_id}.eml")
    assert msg["X-Dunning-Invoice"] == "none" and msg["X-Dunning-Template"] == "card-expiring"
    assert "12/2026" in msg["Subject"]


# -- SendGrid -----------------------------------------------------------------------------
def sendgrid_runtime(make_runtime, url: str, timeout: float = 1.0):
    runtime = make_runtime(SENDGRID_API_KEY=SENDGRID_KEY, SENDGRID_API_HOST=url)
    # The real sender, with a short timeout so the "timeout" answer costs a second, not fifteen.
    runtime.service("email_sender", lambda rt: SendGridSender(
        rt.settings.sendgrid_api_key, rt.settings.email_from, rt.settings.sendgrid_api_host, timeout=timeout))
    return runtime


def accepted(n, request):
    return 202, {"X-Message-Id": f"sg-msg-{n}"}, b""


def test_sendgrid_receives_the_documented_json_and_its_message_id_is_kept(make_runtime):
    with scripted_server(accepted) as sendgrid:
        runtime = sendgrid_runtime(make_runtime, sendgrid.url)
        seed_case(runtime)
        email_id = queue(runtime)
        drain(runtime)

    [request] = sendgrid.requests
    assert request["path"] == "/v3/mail/send"
    assert request["headers"]["Authorization"] == f"Bearer {SENDGRID_KEY}"
    body = json.loads(request["raw"])
    assert body["from"] == {"email": "billing@example.com", "name": "Billing"}
    assert body["personalizations"] == [{"to": [{"email": "owner@example.com"}]}]
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["headers"] == {"X-Dunning-Template": "payment-failed", "X-Dunning-Invoice": "in_test_1",
                               "X-Dunning-Customer": "cus_test_1"}
    assert sorted(body["categories"]) == ["dunning", "payment-failed"]
    assert body["custom_args"]["template"] == "payment-failed"
    assert body["custom_args"]["invoice_id"] == "in_test_1"
    assert body["custom_args"]["email_id"] == email_id
    [row] = rows(runtime, "emails")
    assert row["status"] == "sent" and row["provider_message_id"] == "sg-msg-1"


def test_429_500_and_a_timeout_are_retried_with_backoff_then_accepted_once(make_runtime):
    answers = {1: (429, {}, {"errors": [{"message": "too many"}]}), 2: (500, {}, {"errors": []}), 3: "hang"}

    def script(n, request):
        return answers.get(n) or accepted(n, request)

    with scripted_server(script) as sendgrid:
        runtime = sendgrid_runtime(make_runtime, sendgrid.url, timeout=0.5)
        seed_case(runtime)
        queue(runtime)
        drain(runtime)

        [row] = rows(runtime, "emails")
        assert row["status"] == "pending" and row["attempts"] == 1 and "429" in row["last_error"]
        assert row["next_attempt_at"] > utcnow() + timedelta(seconds=30)  # backing off, not hammering
        assert sweep_emails(runtime, utcnow()) == 0  # not due yet

        settle_outbox(runtime, "emails", sweep_emails, rounds=8)

    [row] = rows(runtime, "emails")
    assert row["status"] == "sent" and row["attempts"] == 4
    assert len(sendgrid.answered(202)) == 1 and len(sendgrid.requests) == 4
    assert row["provider_message_id"] == "sg-msg-4"


def test_a_400_is_a_permanent_failure_never_retried(make_runtime):
    def script(n, request):
        return 400, {}, {"errors": [{"message": "The to array is invalid", "field": "personalizations.0.to"}]}

    with scripted_server(script) as sendgrid:
        runtime = sendgrid_runtime(make_runtime, sendgrid.url)
        seed_case(runtime)
        queue(runtime)
        drain(runtime)
        assert sweep_emails(runtime, utcnow() + timedelta(days=5)) == 0
        drain(runtime)

    [row] = rows(runtime, "emails")
    assert row["status"] == "failed" and row["attempts"] == 1 and "400" in row["last_error"]
    assert len(sendgrid.requests) == 1


def test_an_unreachable_sendgrid_is_transient(make_runtime):
    with scripted_server(accepted) as sendgrid:
        url = sendgrid.url
    runtime = sendgrid_runtime(make_runtime, url)  # nothing listens there any more
    seed_case(runtime)
    queue(runtime)
    drain(runtime)
    [row] = rows(runtime, "emails")
    assert row["status"] == "pending" and row["attempts"] == 1 and "unreachable" in row["last_error"]


def test_a_header_injection_attempt_never_becomes_a_header(make_runtime):
    with scripted_server(accepted) as sendgrid:
        runtime = sendgrid_runtime(make_runtime, sendgrid.url)
        seed_case(runtime, name="Eve\r\nBcc: thief@example.com")
        queue(runtime, template="reminder")
        drain(runtime)
    body = json.loads(sendgrid.requests[0]["raw"])
    assert "\n" not in body["subject"] and set(body["headers"]) == {
        "X-Dunning-Template", "X-Dunning-Invoice", "X-Dunning-Customer"}
    assert body["personalizations"] == [{"to": [{"email": "owner@example.com"}]}]


@pytest.mark.parametrize("address, ok", [
    ("owner@example.com", True), ("a.b+billing@sub.example.co.uk", True),
    ("owner@example.com\r\nBcc: thief@example.com", False), ("owner@example.com, thief@example.com", False),
    ("Owner <owner@example.com>", False), ("owner@@example.com", False), ("@example.com", False),
    ("owner@localhost", False), (" owner@example.com", False), ("", False), (None, False),
])
def test_only_one_plain_address_is_accepted_as_a_recipient(address, ok):
    assert outbox.is_single_address(address) is ok


def test_the_message_builder_refuses_a_line_break_in_any_header():
    from worker.delivery.email_delivery import OutgoingEmail, build_mime, header_value
    assert header_value("a\r\nBcc: x@example.com\x00") == "a Bcc: x@example.com"
    email = OutgoingEmail(id="em_1", template="reminder", recipient="owner@example.com\nBcc: x@example.com",
                          subject="s", text="t", html="<p>h</p>", invoice_id="in_1", customer_id="cus_1",
                          case_id=None, created_at=utcnow())
    with pytest.raises(ValueError):
        build_mime(email, "Billing <billing@example.com>")


def test_an_email_interrupted_again_and_again_for_days_is_failed_not_retried_forever(runtime):
    from worker.delivery.email_delivery import MIN_ATTEMPTS
    seed_case(runtime)
    email_id = queue(runtime)
    runtime.broker.flush_all()
    emails = runtime.db.table("emails")
    with runtime.db.transaction() as conn:
        conn.execute(update(emails).values(status="sending", attempts=MIN_ATTEMPTS,
                                           lease_until=utcnow() - timedelta(minutes=1),
                                           created_at=utcnow() - timedelta(days=4)))
    assert deliver_email(runtime, email_id) == "failed"
    [row] = rows(runtime, "emails")
    assert row["status"] == "failed" and "interrupted" in row["last_error"]
    assert not runtime.settings.email_outbox_dir.exists() or not any(runtime.settings.email_outbox_dir.iterdir())


def test_a_rolled_back_decision_leaves_no_email_and_sends_nothing(runtime):
    seed_case(runtime)

    def decide_then_fail(ctx):
        assert ctx.effects.case_email(ctx, "reminder", "dc_test_1", dedupe_keys.step_email("dc_test_1", 1))
        raise RuntimeError("the handler failed after deciding")

    with pytest.raises(RuntimeError):
        in_handler(runtime, decide_then_fail)
    assert rows(runtime, "emails") == []
    assert runtime.broker.queues["emails"].qsize() == 0
